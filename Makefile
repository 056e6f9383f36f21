# Everything a fresh clone needs goes through these targets: they create .venv and install into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench bench-peers soak clean browser system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The sample file carries the mess of real files (bad rows, conflicts, an unknown job), so the
# run ends with exit 1 ("some rows need attention") by design; anything else is a failure.
demo: $(STAMP)
	$(BIN)/batch-toggle run sample_data/optouts_2026_11.csv --sandbox --max-rps 50 --rejects reports/demo-rejects.csv \
	  || { rc=$$?; [ $$rc -eq 1 ] && echo "demo: exit 1 = the sample's bad rows need attention (see the report)"; [ $$rc -eq 1 ]; }

# The HTML report's browser test needs Debian's chromium: install it when it is missing and we
# may (root, apt reachable); otherwise that one test skips with a message. Never fails the build.
browser:
	@command -v chromium >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1; } \
	  || echo "note: chromium unavailable; the HTML report's browser test will skip"

# System packages the tests use for real (never mocks): Debian's libfaketime, which starts the
# clocks of a CLI run near a power of two (tests/e2e/test_faked_clock.py), and tinyproxy (its
# binary only, no service), the forward proxy the proxy tests start on 127.0.0.1
# (tests/e2e/forward_proxy.py), and PostgreSQL's server binaries (initdb, pg_ctl), from which
# tests/pg_server.py starts a throwaway server per test process. Installed when missing and we may
# (root, apt reachable); otherwise those tests skip with a message.
system-deps:
	@[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || [ -n "$$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null)" ] \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && { apt-get install -y -qq libfaketime >/dev/null 2>&1 \
	            || { apt-get update -qq && apt-get install -y -qq libfaketime; } >/dev/null 2>&1; }; } \
	  || echo "note: libfaketime unavailable; the faked-clock tests will skip"
	@command -v tinyproxy >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && { apt-get install -y -qq tinyproxy-bin >/dev/null 2>&1 \
	            || { apt-get update -qq && apt-get install -y -qq tinyproxy-bin; } >/dev/null 2>&1; }; } \
	  || echo "note: tinyproxy unavailable; the proxy tests will skip"
	@[ -n "$$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null)" ] || command -v initdb >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 \
	            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >/dev/null 2>&1; }; } \
	  || echo "note: PostgreSQL unavailable; the PostgreSQL tests will skip"

# The modules whose types are the public contract (the exceptions, the events, the summary JSON,
# the library's API) are held to mypy --strict; imported modules are followed silently (they
# answer to the plain mypy line of `lint`).
STRICT_TYPED := batch_toggle/errors.py batch_toggle/events.py batch_toggle/report/summary.py batch_toggle/__init__.py

# --dist worksteal: the end-to-end tests differ a hundredfold in length (the README's examples
# take ~40 s, most tests under one), and xdist's default hands them out in runs of neighbours,
# so one worker ended with several long ones in a row: 420 s -> 256 s wall on 2 cores, same CPU.
test: $(STAMP) browser system-deps
	$(BIN)/mypy --strict --follow-imports=silent $(STRICT_TYPED)
	$(BIN)/python -m pytest -q -n 4 --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check batch_toggle tests benchmarks
	$(BIN)/mypy batch_toggle
	$(BIN)/mypy --strict --follow-imports=silent $(STRICT_TYPED)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Newman (Postman's CLI), one of the peers bench_peers.py compares against, installed from the
# npm registry into benchmarks/.node/ (git-ignored); then the peer benchmark alone. `make bench`
# needs no network: without Newman it skips that peer with a message.
NEWMAN := benchmarks/.node/node_modules/.bin/newman
$(NEWMAN):
	npm install --prefix benchmarks/.node --no-audit --no-fund newman@6

bench-peers: $(STAMP) $(NEWMAN)
	$(BIN)/python benchmarks/bench_peers.py

# 20,000 rows against the sandbox with latency, 5xx, resets, slow replies and 429s, then an
# audit of every row, the server's state and every request (about 5 minutes; `make test` runs
# the same at 1,000 rows).
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py --rows 20000

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# docs/report-screenshot.png: the HTML report of the sample run (with a tiny budget, so that the
# timeline shows budget waits) rendered by headless Chromium. The only target that installs a
# system package: Debian's chromium, when it is missing.
.PHONY: screenshot
screenshot: $(STAMP)
	command -v chromium >/dev/null 2>&1 || { apt-get update && apt-get install -y chromium; }
	rm -rf build/screenshot
	$(BIN)/batch-toggle run sample_data/optouts_2026_11.csv --sandbox --rate 100/4s --max-rps 50 \
	  --quiet --report build/screenshot/optouts_2026_11.csv || [ $$? -eq 1 ]
	chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
	  --no-first-run --user-data-dir=build/screenshot/chromium-profile \
	  --screenshot=docs/report-screenshot.png --window-size=1280,1600 \
	  file://$(CURDIR)/build/screenshot/optouts_2026_11.csv.html 2>/dev/null
