"""The internal image repository: podman storage, and the only caller of podman, buildah and
skopeo (`tools.run`)."""
