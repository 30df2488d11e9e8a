# pyenroot developer and CI entry points. Every target is idempotent.
# On a fresh Debian 12 machine, as root:  make demo   (then)   make test

VENV        ?= /opt/pyenroot/venv
PYTHON      := $(VENV)/bin/python
SYSTEM_PY   ?= /usr/bin/python3
APT_PACKAGES := squashfs-tools squashfs-tools-ng squashfuse fuse3 fuse-overlayfs zstd pigz makeself \
	docker-registry busybox-static mmdebstrap debootstrap gcc make libc6-dev \
	slurm-wlm slurmctld slurmd slurm-client munge libslurm-dev libpmix-dev libmpich12 \
	python3 python3-venv iproute2 bc apache2-utils openssl uidmap util-linux procps ca-certificates podman
APT_STAMP   := /var/lib/pyenroot-deps.stamp
# Peer tools for `make bench` only (tests never need them); udocker comes from PyPI into its own virtualenv.
BENCH_APT_PACKAGES := charliecloud-runtime charliecloud-builders proot podman runc uidmap fuse-overlayfs \
	skopeo umoci squashfs-tools-ng
BENCH_VENV  ?= /opt/pyenroot/bench-venv
BENCH_STAMP := /var/lib/pyenroot-bench-deps.stamp
PYTEST_ARGS ?=

.PHONY: deps install plugin demo test test-unit test-integration test-slurm lint bench bench-deps cluster-up cluster-down clean

deps: $(APT_STAMP) $(VENV)/.deps-stamp

$(APT_STAMP): Makefile
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
		--no-install-recommends $(APT_PACKAGES)
	touch $@

$(VENV)/.deps-stamp: pyproject.toml $(APT_STAMP)
	test -x $(PYTHON) || $(SYSTEM_PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[test]'
	chmod -R a+rX $(dir $(VENV))
	touch $@

install: deps plugin
	$(PYTHON) -m pip install -q --no-deps --force-reinstall .
	ln -sf $(VENV)/bin/pyenroot /usr/local/bin/pyenroot
	ln -sf $(VENV)/bin/pyenroot-cluster /usr/local/bin/pyenroot-cluster
	@if [ -f spank_plugin/Makefile ]; then $(MAKE) -C spank_plugin install; fi

plugin:
	@if [ -f spank_plugin/Makefile ]; then $(MAKE) -C spank_plugin; fi

demo: install
	$(PYTHON) -m pyenroot.demo

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi; exit $$rc

test-unit: deps
	$(PYTHON) -m pytest -m unit $(PYTEST_ARGS)

test-integration: install
	$(PYTHON) -m pytest -m integration $(PYTEST_ARGS)

test-slurm: install
	$(PYTHON) -m pytest -m slurm $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check pyenroot tests bench
	$(VENV)/bin/ruff format --check pyenroot tests bench || true

bench-deps: $(BENCH_STAMP)

$(BENCH_STAMP): Makefile
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
		--no-install-recommends $(BENCH_APT_PACKAGES)
	test -x $(BENCH_VENV)/bin/python || $(SYSTEM_PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q 'udocker==1.3.17'
	chmod -R a+rX $(BENCH_VENV)
	touch $@

bench: install bench-deps
	$(PYTHON) bench/import.py
	$(PYTHON) bench/start.py
	$(PYTHON) bench/slurm.py

cluster-up: install
	$(VENV)/bin/pyenroot-cluster up

cluster-down:
	$(VENV)/bin/pyenroot-cluster down

clean:
	rm -rf build *.egg-info .pytest_cache
	@if [ -f spank_plugin/Makefile ]; then $(MAKE) -C spank_plugin clean; fi
