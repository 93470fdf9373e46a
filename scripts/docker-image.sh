#!/usr/bin/env bash
# A small Docker image of this project, made without a registry (`docker import`), cached by
# the hash of the project's files: prints its tag.
#
# Contents: the interpreter of .venv (its standard library without test/ and site-packages),
# the shared libraries everything in it links to (ldd) and libseccomp, /bin/sh, a new venv
# at /opt/venv with this project and its runtime dependencies only (pip, from its cache or
# index), kernelspecs installed into it (--sys-prefix), users root and jovyan (1000). All of
# it root-owned, as the container guide's image is. About 100 MB.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
STATE=/var/lib/sandbox-kernel-engines
VENV_PY=$REPO/.venv/bin/python
[ -x "$VENV_PY" ] || { echo "docker-image.sh: run scripts/setup.sh first (no $VENV_PY)" >&2; exit 1; }
BASE=$("$VENV_PY" -c 'import sys; print(sys.base_prefix)')
BASEPY=$("$VENV_PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
VER=$("$VENV_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
HASH=$( (cd "$REPO" && git ls-files -z sandbox_kernel profiles kernelspec pyproject.toml sandbox_kernel_guard.pth \
         scripts/docker-image.sh | xargs -0 sha256sum; echo "$BASEPY") | sha256sum | cut -c1-12)
TAG=sandbox-kernel-test:$HASH
if docker image inspect "$TAG" >/dev/null 2>&1; then echo "$TAG"; exit 0; fi

STAGE=$STATE/image/rootfs
rm -rf "$STAGE"; mkdir -p "$STAGE"
log() { echo "docker-image.sh: $*" >&2; }
log "building $TAG from $BASE (Python $VER)"

# the interpreter and its standard library, at the same path as here (the venv names it)
mkdir -p "$STAGE$BASE/bin" "$STAGE$BASE/lib"
cp -a "$BASEPY" "$STAGE$BASEPY"
for f in "$BASE"/lib/libpython"$VER"*.so*; do [ -e "$f" ] && cp -a "$f" "$STAGE$BASE/lib/"; done
STDLIB=$("$VENV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
mkdir -p "$STAGE$STDLIB"
tar -C "$STDLIB" --exclude=./test --exclude=./site-packages --exclude=./dist-packages --exclude=./idlelib \
    --exclude=./tkinter --exclude=./turtledemo --exclude=./ensurepip --exclude='./config-*' -cf - . \
    | tar -C "$STAGE$STDLIB" -xf -
mkdir -p "$STAGE$STDLIB/site-packages"
# the venv: this project and its runtime dependencies
"$BASEPY" -m venv --without-pip "$STAGE/opt/venv"
"$VENV_PY" -m pip --python "$STAGE/opt/venv/bin/python" install -q --no-compile --no-warn-script-location \
    "$REPO" 2>&1 | grep -v -e "is ignored" -e "^$" >&2 || true
sed -i "1s|^#!$STAGE/opt/venv/bin/python.*|#!/opt/venv/bin/python|" "$STAGE"/opt/venv/bin/* 2>/dev/null || true
rm -rf "$STAGE"/opt/venv/lib/python*/site-packages/*.dist-info/RECORD
find "$STAGE/opt/venv" -name '__pycache__' -prune -exec rm -rf {} +
# shells and libraries
mkdir -p "$STAGE/bin" "$STAGE/usr/bin" "$STAGE/etc" "$STAGE/tmp" "$STAGE/home/jovyan" "$STAGE/root" \
         "$STAGE/proc" "$STAGE/sys" "$STAGE/dev"
cp -aL /bin/dash "$STAGE/bin/sh"
for t in id cat ls; do cp -aL "$(command -v $t)" "$STAGE/usr/bin/$t"; done
libs=$( (find "$STAGE" -type f \( -name '*.so*' -o -perm -u+x \) -print0 | xargs -0 ldd 2>/dev/null || true) \
        | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | sort -u)
for l in $libs /lib/x86_64-linux-gnu/libseccomp.so.2 /lib64/ld-linux-x86-64.so.2; do
    [ -e "$l" ] || continue
    mkdir -p "$STAGE$(dirname "$l")"
    cp -aL "$l" "$STAGE$l"
    real=$(readlink -f "$l"); [ "$real" != "$l" ] && { mkdir -p "$STAGE$(dirname "$real")"; cp -aL "$real" "$STAGE$real"; }
done
[ -d /lib64 ] && [ ! -e "$STAGE/lib64" ] && mkdir -p "$STAGE/lib64"
cp -a /etc/ld.so.conf "$STAGE/etc/" 2>/dev/null || true
cp -a /etc/ld.so.conf.d "$STAGE/etc/" 2>/dev/null || true
ldconfig -r "$STAGE" 2>/dev/null || true
printf 'root:x:0:0:root:/root:/bin/sh\njovyan:x:1000:1000::/home/jovyan:/bin/sh\n' >"$STAGE/etc/passwd"
printf 'root:x:0:\njovyan:x:1000:\n' >"$STAGE/etc/group"
chmod 1777 "$STAGE/tmp"; chmod 0755 "$STAGE/root" "$STAGE$(dirname "$BASE")" 2>/dev/null || true
d=$BASE; while [ "$d" != / ]; do chmod o+rx "$STAGE$d"; d=$(dirname "$d"); done
chown 1000:1000 "$STAGE/home/jovyan"
tar -C "$STAGE" --numeric-owner -cf - . | docker import -c 'ENV PATH=/opt/venv/bin:/usr/bin:/bin' \
    - "$TAG-base" >/dev/null
rm -rf "$STAGE"
# kernelspecs and bytecode, written by the image's own sandbox-kernel (as root: root-owned)
cid=$(docker create "$TAG-base" /opt/venv/bin/sandbox-kernel install --all --sys-prefix)
docker start -a "$cid" >&2
docker commit -c 'ENV PATH=/opt/venv/bin:/usr/bin:/bin' -c 'WORKDIR /tmp' "$cid" "$TAG" >/dev/null
docker rm "$cid" >/dev/null
docker rmi "$TAG-base" >/dev/null 2>&1 || true
# older builds of this image (another hash) are not kept
for old in $(docker images sandbox-kernel-test --format '{{.Tag}}'); do
    [ "$old" = "$HASH" ] || docker rmi "sandbox-kernel-test:$old" >/dev/null 2>&1 || true
done
echo "$TAG"
