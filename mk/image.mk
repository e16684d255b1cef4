# Container image and its smoke test (Containerfile, conf/image/, tests/deploy/).
#   make deps-image   buildah, podman, debootstrap, umoci, skopeo, runc from apt when missing
#   make image        build/image/metaproxy.tar (docker-archive; `podman load -i` / `docker load -i`)
#   make image-test   build, run it with podman, real tinyrpc traffic through it, SIGTERM drains (exit 0)
# Measured here (vfs storage, 2 cores): cold build about 4 min (debootstrap, pip), rebuild after a
# code change about 1 min; image-test about 1.5 min warm.

IMAGE_APT_PACKAGES := buildah podman debootstrap umoci skopeo runc
IMAGE_PYTHON ?= $(if $(PY),$(PY),.venv/bin/python)
IMAGE_OUT ?= build/image

.PHONY: deps-image image image-test image-clean

deps-image:
	@missing=""; for p in $(IMAGE_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

image: deps-image venv compiled
	conf/image/build.sh $(IMAGE_OUT) $(IMAGE_PYTHON)

image-test: deps-image
	$(IMAGE_PYTHON) -m pytest -q tests/deploy/test_image.py --timeout 900 -p no:cacheprovider

# vfs storage keeps a full copy per layer: after many rebuilds, reclaim the space (the next build is cold).
image-clean:
	-buildah --storage-driver vfs rmi --prune
	-podman --storage-driver vfs rmi --force localhost/metaproxy:latest
	rm -rf $(IMAGE_OUT)
