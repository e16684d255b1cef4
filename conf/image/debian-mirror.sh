#!/bin/sh
# Print "MIRROR SUITE": the Debian mirror and release this machine's apt already uses, so the image's
# base is built from the same place (no mirror host is written in the repository). Reads one-line
# sources (/etc/apt/sources.list*) and deb822 sources (/etc/apt/sources.list.d/*.sources).
set -eu
suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
mirror=""
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
	[ -r "$f" ] || continue
	mirror=$(awk -v s="$suite" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1) == s || s == "") { print $i; exit } } }' "$f")
	[ -n "$mirror" ] && break
done
if [ -z "$mirror" ]; then
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		# the first stanza whose Suites has the release itself (not -security or -updates)
		mirror=$(awk -v s="$suite" '
			/^[ \t]*$/ { if (uris != "" && ok) { print uris; exit } uris = ""; ok = 0; next }
			tolower($1) == "uris:" { uris = $2 }
			tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == s || s == "") ok = 1 }
			END { if (uris != "" && ok) print uris }' "$f" | head -n1)
		[ -n "$mirror" ] && break
	done
fi
if [ -z "$mirror" ] || [ -z "$suite" ]; then
	echo "debian-mirror.sh: no Debian mirror/suite found in /etc/apt (set DEBIAN_MIRROR and DEBIAN_SUITE)" >&2
	exit 1
fi
echo "$mirror $suite"
