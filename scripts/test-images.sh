#!/usr/bin/env bash
# Builds berth's test images from Debian's busybox-static and pushes them to a registry over
# the Distribution HTTP API (reproducible gzip layers, OCI media types).
#
#   scripts/test-images.sh push HOST:PORT [NAME...]
#
# Images (all under berth-test/, tag latest):
#   hello    busybox httpd on $PORT (default 8080) serving / and /up (200); also tag v2,
#            the same but / says "hello from berth v2" (another digest, for rolling updates)
#   sleeper  sleeps until SIGTERM, then exits 0
#   crasher  prints to stderr and exits 1 at once
#   burner   a busy loop (burns one core)
#   layers   3 layers: /etc/removed deleted by a whiteout, /data made opaque over lower files
#   multi    an OCI index with linux/amd64 and linux/arm64 images; /platform names each
# Env: BERTH_TEST_REGISTRY_AUTH=user:pass for a registry behind basic auth.
set -euo pipefail

[[ "${1:-}" == push && -n "${2:-}" ]] || { echo "usage: $0 push HOST:PORT [NAME...]" >&2; exit 2; }
registry=$2
shift 2
names=("$@")
((${#names[@]})) || names=(hello sleeper crasher burner layers multi)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl_auth=()
[[ -n "${BERTH_TEST_REGISTRY_AUTH:-}" ]] && curl_auth=(-u "$BERTH_TEST_REGISTRY_AUTH")
api() { curl -fsS "${curl_auth[@]}" "$@"; }

# layer DIR -> sets LAYER_DIGEST LAYER_SIZE LAYER_DIFFID LAYER_FILE (reproducible bytes)
layer() {
  local src=$1 out=$work/layer-$RANDOM$RANDOM
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
      -C "$src" -cf "$out.tar" .
  gzip -n -6 -c "$out.tar" > "$out.tar.gz"
  LAYER_DIFFID=sha256:$(sha256sum "$out.tar" | cut -d' ' -f1)
  LAYER_DIGEST=sha256:$(sha256sum "$out.tar.gz" | cut -d' ' -f1)
  LAYER_SIZE=$(stat -c %s "$out.tar.gz")
  LAYER_FILE=$out.tar.gz
  rm -f "$out.tar"
}

# push_blob REPO FILE -> sets BLOB_DIGEST BLOB_SIZE
push_blob() {
  local repo=$1 file=$2
  BLOB_DIGEST=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  BLOB_SIZE=$(stat -c %s "$file")
  if api -o /dev/null -I "http://$registry/v2/$repo/blobs/$BLOB_DIGEST" 2>/dev/null; then
    return
  fi
  local loc
  loc=$(api -o /dev/null -D - -X POST "http://$registry/v2/$repo/blobs/uploads/" |
        tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  [[ "$loc" == http* ]] || loc="http://$registry$loc"
  if [[ "$loc" == *\?* ]]; then loc="$loc&digest=$BLOB_DIGEST"; else loc="$loc?digest=$BLOB_DIGEST"; fi
  api -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$loc"
}

# push_manifest REPO REF FILE MEDIATYPE -> sets MANIFEST_DIGEST MANIFEST_SIZE
push_manifest() {
  local repo=$1 ref=$2 file=$3 mt=$4
  MANIFEST_DIGEST=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  MANIFEST_SIZE=$(stat -c %s "$file")
  api -o /dev/null -X PUT -H "Content-Type: $mt" --data-binary "@$file" \
      "http://$registry/v2/$repo/manifests/$ref"
}

# image REPO TAG ARCH CMD_JSON EXPOSED_JSON LAYER_DIR... -> pushes config, layers, manifest
image() {
  local repo=$1 tag=$2 arch=$3 cmd=$4 exposed=$5
  shift 5
  local layers_json="[]" diffids_json="[]"
  for dir in "$@"; do
    layer "$dir"
    push_blob "$repo" "$LAYER_FILE"
    layers_json=$(jq -c --arg d "$LAYER_DIGEST" --argjson s "$LAYER_SIZE" \
      '. + [{mediaType:"application/vnd.oci.image.layer.v1.tar+gzip",digest:$d,size:$s}]' <<<"$layers_json")
    diffids_json=$(jq -c --arg d "$LAYER_DIFFID" '. + [$d]' <<<"$diffids_json")
  done
  jq -cn --arg arch "$arch" --argjson cmd "$cmd" --argjson exposed "$exposed" --argjson diff "$diffids_json" '{
      created: "1970-01-01T00:00:00Z", architecture: $arch, os: "linux",
      config: {Env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: $cmd, WorkingDir: "/",
               ExposedPorts: $exposed, StopSignal: "SIGTERM"},
      rootfs: {type: "layers", diff_ids: $diff}}' > "$work/config.json"
  push_blob "$repo" "$work/config.json"
  jq -cn --arg d "$BLOB_DIGEST" --argjson s "$BLOB_SIZE" --argjson layers "$layers_json" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $d, size: $s},
      layers: $layers}' > "$work/manifest.json"
  push_manifest "$repo" "$tag" "$work/manifest.json" application/vnd.oci.image.manifest.v1+json
}

# The shared base layer: busybox with its applets, /etc/passwd and /etc/group, empty
# mount points. Built once; every image starts from it.
base=$work/base
mkdir -p "$base"/{bin,etc,proc,sys,dev,tmp,www,root,home/app}
cp /bin/busybox "$base/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ "$applet" == busybox ]] || ln -s busybox "$base/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$base/etc/passwd"
printf 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n' > "$base/etc/group"
chmod 1777 "$base/tmp"
chown 1000:1000 "$base/home/app"

hello=$work/hello-layer
mkdir -p "$hello/www"
echo "hello from berth" > "$hello/www/index.html"
echo "ok" > "$hello/www/up"

none='{}'
for name in "${names[@]}"; do
  repo=berth-test/$name
  case "$name" in
  hello)
    image "$repo" latest amd64 '["/bin/sh","-c","exec /bin/httpd -f -p \"${PORT:-8080}\" -h /www"]' \
      '{"8080/tcp":{}}' "$base" "$hello"
    latest_digest=$MANIFEST_DIGEST
    hello2=$work/hello2-layer
    mkdir -p "$hello2/www"
    echo "hello from berth v2" > "$hello2/www/index.html"
    echo "ok" > "$hello2/www/up"
    image "$repo" v2 amd64 '["/bin/sh","-c","exec /bin/httpd -f -p \"${PORT:-8080}\" -h /www"]' \
      '{"8080/tcp":{}}' "$base" "$hello2"
    echo "pushed $registry/$repo:v2 ($MANIFEST_DIGEST)"
    MANIFEST_DIGEST=$latest_digest ;;
  sleeper)
    image "$repo" latest amd64 '["/bin/sh","-c","trap \"exit 0\" TERM INT; sleep 2147483647 & wait"]' \
      "$none" "$base" ;;
  crasher)
    image "$repo" latest amd64 '["/bin/sh","-c","echo crasher: exiting 1 >&2; exit 1"]' "$none" "$base" ;;
  burner)
    image "$repo" latest amd64 '["/bin/sh","-c","while :; do :; done"]' "$none" "$base" ;;
  layers)
    l2=$work/layers-2 l3=$work/layers-3
    mkdir -p "$l2/etc" "$l2/data/sub" "$l3/etc" "$l3/data"
    echo "removed by a whiteout above" > "$l2/etc/removed"
    echo kept > "$l2/etc/kept"
    echo a > "$l2/data/a"; echo b > "$l2/data/sub/b"
    : > "$l3/etc/.wh.removed"
    : > "$l3/data/.wh..wh..opq"
    echo c > "$l3/data/c"
    image "$repo" latest amd64 '["/bin/sh","-c","ls -R /data; cat /etc/kept; test ! -e /etc/removed"]' \
      "$none" "$base" "$l2" "$l3" ;;
  multi)
    entries="[]"
    for arch in amd64 arm64; do
      p=$work/multi-$arch
      mkdir -p "$p"
      echo "linux/$arch" > "$p/platform"
      image "$repo" "$arch" "$arch" '["/bin/cat","/platform"]' "$none" "$base" "$p"
      entries=$(jq -c --arg d "$MANIFEST_DIGEST" --argjson s "$MANIFEST_SIZE" --arg a "$arch" \
        '. + [{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$d,size:$s,
               platform:{architecture:$a,os:"linux"}}]' <<<"$entries")
    done
    jq -cn --argjson m "$entries" \
      '{schemaVersion:2, mediaType:"application/vnd.oci.image.index.v1+json", manifests:$m}' \
      > "$work/index.json"
    push_manifest "$repo" latest "$work/index.json" application/vnd.oci.image.index.v1+json ;;
  *) echo "unknown test image: $name" >&2; exit 2 ;;
  esac
  echo "pushed $registry/$repo:latest ($MANIFEST_DIGEST)"
done
