# pyenroot developer and CI entry points. Every target is idempotent.
# On a fresh Debian 12 machine, as root:  make demo   (then)   make test

VENV        ?= /opt/pyenroot/venv
PYTHON      := $(VENV)/bin/python
SYSTEM_PY   ?= /usr/bin/python3
APT_PACKAGES := squashfs-tools squashfs-tools-ng squashfuse fuse3 fuse-overlayfs zstd pigz isal makeself \
	docker-registry busybox-static mmdebstrap debootstrap gcc make libc6-dev \
	slurm-wlm slurmctld slurmd slurm-client munge libslurm-dev libpmix-dev libmpich12 \
	python3 python3-venv iproute2 bc apache2-utils openssl uidmap util-linux procps ca-certificates podman \
	python3-argparse-manpage man-db groff-base bash-completion
APT_STAMP   := /var/lib/pyenroot-deps.stamp
# Peer tools for `make bench` only (tests never need them); udocker comes from PyPI into its own virtualenv.
BENCH_APT_PACKAGES := charliecloud-runtime charliecloud-builders proot podman runc uidmap fuse-overlayfs \
	skopeo umoci squashfs-tools-ng
BENCH_VENV  ?= /opt/pyenroot/bench-venv
BENCH_STAMP := /var/lib/pyenroot-bench-deps.stamp
PYTEST_ARGS ?=
# `make deb`: Debian's own tooling (debhelper + pybuild) builds the packages from a copy of this tree.
DEB_PACKAGES := debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	python3-argparse-manpage dpkg-dev fakeroot libslurm-dev gcc make
DEB_STAMP   := /var/lib/pyenroot-deb-deps.stamp
DEB_BUILD   := build/deb
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# Manual pages and bash completion, generated from the argparse definitions (system python3, which has
# python3-argparse-manpage; the package itself comes from this tree).
GENERATED   := build/generated
PREFIX      ?= /usr/local
MAN_DIR     ?= $(PREFIX)/share/man/man1
COMPLETION_DIR ?= $(PREFIX)/share/bash-completion/completions

.PHONY: deps install plugin man demo test test-unit test-integration test-slurm test-packages deb deb-deps lint bench \
	bench-deps cluster-up cluster-down clean

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

install: deps plugin man
	$(PYTHON) -m pip install -q --no-deps --force-reinstall .
	ln -sf $(VENV)/bin/pyenroot /usr/local/bin/pyenroot
	ln -sf $(VENV)/bin/pyenroot-cluster /usr/local/bin/pyenroot-cluster
	@if [ -f spank_plugin/Makefile ]; then $(MAKE) -C spank_plugin install; fi
	install -d $(MAN_DIR) $(COMPLETION_DIR)
	install -m 0644 $(GENERATED)/man/*.1 $(MAN_DIR)/
	install -m 0644 $(GENERATED)/completion/pyenroot $(COMPLETION_DIR)/pyenroot

man:
	rm -rf $(GENERATED)
	PYTHONPATH=$(CURDIR) $(SYSTEM_PY) -m pyenroot.devtools.manpages $(GENERATED)/man >/dev/null
	PYTHONPATH=$(CURDIR) $(SYSTEM_PY) -m pyenroot.devtools.completion $(GENERATED)/completion/pyenroot >/dev/null

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

deb-deps: $(DEB_STAMP)

$(DEB_STAMP): Makefile
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
		--no-install-recommends $(DEB_PACKAGES)
	touch $@

# The packages land in $(DEB_BUILD): pyenroot_VERSION-REV_all.deb, pyenroot-slurm-plugin_VERSION-REV_ARCH.deb.
deb: $(DEB_STAMP)
	rm -rf $(DEB_BUILD)
	mkdir -p $(DEB_BUILD)/pyenroot-$(VERSION)
	tar -c --exclude=./build --exclude=./.git --exclude='*.egg-info' --exclude=__pycache__ \
		--exclude=.pytest_cache --exclude='*.so' --exclude=./spank_plugin/tests/build . \
		| tar -x -C $(DEB_BUILD)/pyenroot-$(VERSION)
	tar -C $(DEB_BUILD) -czf $(DEB_BUILD)/pyenroot_$(VERSION).orig.tar.gz --exclude=debian pyenroot-$(VERSION)
	# The system python3 builds the package, whatever python3 comes first on the caller's PATH.
	cd $(DEB_BUILD)/pyenroot-$(VERSION) && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	@ls $(DEB_BUILD)/*.deb

# Installs the built packages into the system (apt-get install ./…deb; the venv stays as it is) and runs
# tests/packages against them: the demo's import and start, and srun through the packaged plugin.
test-packages: deb install
	PYENROOT_TEST_DEBS=$(CURDIR)/$(DEB_BUILD) $(PYTHON) -m pytest tests/packages $(PYTEST_ARGS)

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
	rm -rf debian/.debhelper debian/pyenroot debian/pyenroot-slurm-plugin debian/files debian/*.substvars \
		debian/*.debhelper.log debian/debhelper-build-stamp
	@if [ -f spank_plugin/Makefile ]; then $(MAKE) -C spank_plugin clean; fi
