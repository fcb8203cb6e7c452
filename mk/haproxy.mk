# HAProxy 2.0.0 on libpools (README, "HAProxy on libpools").
#   make haproxy         builds, from ../shared/haproxy/haproxy-2.0.0.tar.gz:
#                          target/haproxy/glibc/haproxy        on libpools.so
#                          target/haproxy/musl/haproxy         musl-gcc -static, libpools.a
#                          target/haproxy/stock-glibc/haproxy  2.0.0 + the upstream
#                          target/haproxy/stock-musl/haproxy   per-thread cache fix
#   make test-haproxy    the traffic test (scripts/haproxy-traffic.sh) on both
#                        libpools builds; part of `make test` when the
#                        tarball is there
#   make bench-haproxy   bench/haproxy-bench.sh (stock against libpools)

HAP_DIR   ?= $(CURDIR)/../shared/haproxy
HAP_TAR   := $(HAP_DIR)/haproxy-2.0.0.tar.gz
HAP_FIX   := $(HAP_DIR)/0001-BUG-MINOR-memory-set-objects-size-for-pools-in-the-per-thread-cache.patch
HAP_OUT   := target/haproxy
HAP_COMPAT := compat/haproxy/memory.h compat/haproxy/memory.c compat/haproxy/haproxy-2.0.0.patch
HAP_VARIANTS := glibc musl stock-glibc stock-musl
# HAProxy's own build, without the libraries this machine may lack.
HAP_MAKE  := $(MAKE) -j2 TARGET=linux-glibc USE_OPENSSL= USE_ZLIB= USE_PCRE=
HAP_MUSL  := CC=$(MUSL_CC) USE_DL= USE_RT= USE_LIBCRYPT= LDFLAGS=-static
# musl-gcc searches no system include directory: the kernel headers that
# HAProxy includes come from a folder of links, after musl's own headers.
HAP_KHDR  := $(CURDIR)/$(HAP_OUT)/kernel-headers
HAP_TRAFFIC_SECS ?= 25

.PHONY: haproxy test-haproxy bench-haproxy haproxy-tool

haproxy: $(addprefix $(HAP_OUT)/,$(addsuffix /haproxy,$(HAP_VARIANTS))) haproxy-tool

$(HAP_TAR) $(HAP_FIX):
	@echo "make haproxy: $@ is missing." >&2
	@echo "  It needs HAProxy 2.0.0's source (haproxy-2.0.0.tar.gz) and the upstream fix" >&2
	@echo "  (0001-BUG-MINOR-memory-...patch) in ../shared/haproxy/ beside this repository," >&2
	@echo "  or in the folder named by HAP_DIR=..." >&2
	@exit 1

$(HAP_KHDR):
	@mkdir -p $@
	ln -sfn /usr/include/linux $@/linux
	ln -sfn /usr/include/asm-generic $@/asm-generic
	ln -sfn /usr/include/x86_64-linux-gnu/asm $@/asm

# A fresh source tree per variant: the tarball, then the upstream fix
# (stock-*, the more specific rule) or the compat layer and its patch.
$(HAP_OUT)/src-stock-%/.prepared: $(HAP_TAR) $(HAP_FIX)
	rm -rf $(@D) && mkdir -p $(@D)
	tar xzf $(HAP_TAR) -C $(@D) --strip-components=1
	cd $(@D) && patch -p1 -s < $(HAP_FIX)
	touch $@

$(HAP_OUT)/src-%/.prepared: $(HAP_TAR) $(HAP_COMPAT)
	rm -rf $(@D) && mkdir -p $(@D)
	tar xzf $(HAP_TAR) -C $(@D) --strip-components=1
	cp compat/haproxy/memory.h $(@D)/include/common/memory.h
	cp compat/haproxy/memory.c $(@D)/src/memory.c
	cd $(@D) && patch -p1 -s < $(CURDIR)/compat/haproxy/haproxy-2.0.0.patch
	touch $@

# The HAProxy builds always run (HAProxy's make is incremental); the binary
# is relinked each time, since HAProxy's makefile does not know libpools.
.PHONY: $(addprefix $(HAP_OUT)/,$(addsuffix /haproxy,$(HAP_VARIANTS)))

$(HAP_OUT)/glibc/haproxy: $(HAP_OUT)/src-glibc/.prepared lib
	rm -f $(HAP_OUT)/src-glibc/haproxy
	$(HAP_MAKE) -C $(HAP_OUT)/src-glibc ADDINC=-I$(CURDIR)/include \
	  ADDLIB="-L$(CURDIR)/$(REL) -lpools -Wl,-rpath,$(CURDIR)/$(REL)" > $(HAP_OUT)/build-glibc.log 2>&1 \
	  || { tail -30 $(HAP_OUT)/build-glibc.log; exit 1; }
	@mkdir -p $(@D) && cp $(HAP_OUT)/src-glibc/haproxy $@

$(HAP_OUT)/musl/haproxy: $(HAP_OUT)/src-musl/.prepared musl | $(HAP_KHDR)
	rm -f $(HAP_OUT)/src-musl/haproxy
	$(HAP_MAKE) -C $(HAP_OUT)/src-musl $(HAP_MUSL) \
	  ADDINC="-I$(CURDIR)/include -idirafter $(HAP_KHDR)" \
	  ADDLIB=$(CURDIR)/$(MUSL_LIB) > $(HAP_OUT)/build-musl.log 2>&1 \
	  || { tail -30 $(HAP_OUT)/build-musl.log; exit 1; }
	@mkdir -p $(@D) && cp $(HAP_OUT)/src-musl/haproxy $@

$(HAP_OUT)/stock-glibc/haproxy: $(HAP_OUT)/src-stock-glibc/.prepared
	$(HAP_MAKE) -C $(HAP_OUT)/src-stock-glibc > $(HAP_OUT)/build-stock-glibc.log 2>&1 \
	  || { tail -30 $(HAP_OUT)/build-stock-glibc.log; exit 1; }
	@mkdir -p $(@D) && cp $(HAP_OUT)/src-stock-glibc/haproxy $@

$(HAP_OUT)/stock-musl/haproxy: $(HAP_OUT)/src-stock-musl/.prepared | $(HAP_KHDR)
	$(HAP_MAKE) -C $(HAP_OUT)/src-stock-musl $(HAP_MUSL) \
	  ADDINC="-idirafter $(HAP_KHDR)" > $(HAP_OUT)/build-stock-musl.log 2>&1 \
	  || { tail -30 $(HAP_OUT)/build-stock-musl.log; exit 1; }
	@mkdir -p $(@D) && cp $(HAP_OUT)/src-stock-musl/haproxy $@

haproxy-tool: $(HAP_OUT)/haptool

$(HAP_OUT)/haptool: compat/haproxy/haptool.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -std=c11 -Wall -Wextra -Werror $< -o $@

# Both libpools builds under wrk and the SIGQUIT storm, 2 MiB buffers.
test-haproxy: $(HAP_OUT)/glibc/haproxy $(HAP_OUT)/musl/haproxy haproxy-tool
	@set -e; for v in glibc musl; do echo "== haproxy $$v: $(HAP_TRAFFIC_SECS) s of wrk -c64 + SIGQUIT every 100 us"; \
	  scripts/haproxy-traffic.sh $(HAP_OUT)/$$v/haproxy $(HAP_TRAFFIC_SECS) 2097152 1; done

bench-haproxy: haproxy
	bench/haproxy-bench.sh

ifneq ($(wildcard $(HAP_TAR)),)
test: test-haproxy
endif
