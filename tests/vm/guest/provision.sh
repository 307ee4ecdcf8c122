#!/bin/bash
# Runs once in the guest at image build time (as a scenario, from the 9p share): imports the
# contain-test container image. `docker import` needs a running dockerd, hence a boot.
set -euo pipefail
cd "$CONTAIN_SHARE"
echo "provision: docker import contain-test.tar"
time docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  contain-test.tar contain-test:latest
docker image ls
echo "provision: smoke check of the image"
time docker run --rm --network none contain-test:latest sh -c 'busybox | head -1; curl --version | head -1; python3 -c "import socket, ssl, json; print(\"python ok\")"'
# Leave nothing behind but the image.
docker container prune -f >/dev/null
sync
echo "provision: done"
