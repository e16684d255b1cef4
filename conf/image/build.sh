#!/bin/sh
# Build the metaproxy container image and write it as a docker-archive: `make image` runs this.
#
#   conf/image/build.sh OUT_DIR PYTHON
#
# 1. base: a Debian root filesystem made by `debootstrap --variant=minbase` with python3, from the
#    mirror and release this machine's apt uses (conf/image/debian-mirror.sh); made once, then reused.
# 2. context: that rootfs as a tarball, the project's wheel and its requirements, the image's
#    config, sample filters and MetaRouter routes.
# 3. image: `docker build` when a Docker engine answers, else `buildah` (vfs storage, chroot
#    isolation: no daemon, no privileges beyond root). The CA bundle pip needs (PIP_CERT or the
#    system bundle) is a build secret: visible to the pip step only, never stored in a layer.
# 4. OUT_DIR/metaproxy.tar, loadable by `docker load` / `podman load`.
set -eu
out=${1:-build/image}
py=${2:-.venv/bin/python}
name=${IMAGE_NAME:-metaproxy}
tag=${IMAGE_TAG:-latest}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
ctx="$out/context"

# -- 1. base root filesystem ------------------------------------------------------------------
if [ ! -s "$out/rootfs.tar" ]; then
	if [ -n "${DEBIAN_MIRROR:-}" ] && [ -n "${DEBIAN_SUITE:-}" ]; then
		mirror=$DEBIAN_MIRROR suite=$DEBIAN_SUITE
	else
		set -- $("$here/debian-mirror.sh"); mirror=$1 suite=$2
	fi
	echo "image: debootstrap $suite from $mirror (minbase + python3)"
	rm -rf "$out/rootfs" "$out/rootfs.tar.tmp"
	debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
		"$suite" "$out/rootfs" "$mirror" > "$out/debootstrap.log" 2>&1 \
		|| { tail -20 "$out/debootstrap.log" >&2; exit 1; }
	rm -rf "$out/rootfs/var/cache/apt/archives/"*.deb "$out/rootfs/var/lib/apt/lists/"* "$out/rootfs/tmp/"*
	tar -C "$out/rootfs" --numeric-owner -cf "$out/rootfs.tar.tmp" .
	mv "$out/rootfs.tar.tmp" "$out/rootfs.tar"
	rm -rf "$out/rootfs"
fi

# -- 2. build context ---------------------------------------------------------------------------
rm -rf "$ctx"
etc="$ctx/stage/etc/metaproxy"
mkdir -p "$ctx/stage/dist" "$etc/filters/lua" "$etc/filters/wasm" "$etc/routes"
ln "$out/rootfs.tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$out/rootfs.tar" "$ctx/rootfs.tar"
(cd "$root" && "$py" -m pip wheel --quiet --no-deps --no-build-isolation -w "$ctx/stage/dist" . )
"$py" - "$ctx/stage/dist" > "$ctx/requirements.txt" <<'PYEOF'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("metaproxy-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    for line in zf.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            print(line.split(":", 1)[1].strip())
PYEOF
cp "$here/metaproxy.yaml" "$etc/metaproxy.yaml"
cp "$root"/filters/lua/*.lua "$etc/filters/lua/"
cp "$root"/filters/wasm/*.wasm "$etc/filters/wasm/"
cp "$root"/conf/routes/*.yaml "$etc/routes/"

ca=${CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
[ -r "$ca" ] || { ca="$out/empty-ca.pem"; : > "$ca"; }

# -- 3. image -----------------------------------------------------------------------------------
rm -f "$out/metaproxy.tar.tmp"
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
	echo "image: docker build"
	DOCKER_BUILDKIT=1 docker build --secret "id=cacert,src=$ca" -f "$root/Containerfile" -t "$name:$tag" "$ctx"
	docker save -o "$out/metaproxy.tar.tmp" "$name:$tag"
else
	echo "image: buildah (vfs, chroot isolation)"
	bah="buildah --storage-driver vfs"
	$bah bud --layers --isolation chroot --secret "id=cacert,src=$ca" -f "$root/Containerfile" \
		-t "localhost/$name:$tag" "$ctx"
	$bah push --quiet "localhost/$name:$tag" "docker-archive:$out/metaproxy.tar.tmp:localhost/$name:$tag"
fi
mv "$out/metaproxy.tar.tmp" "$out/metaproxy.tar"
echo "image: $out/metaproxy.tar ($(du -h "$out/metaproxy.tar" | cut -f1))"
