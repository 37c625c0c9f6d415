#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian
# machine (as root), then runs the whole test suite.
#
# Tests use real tools and fail loudly when one is missing; this script is
# what puts them there: swaks (an independent SMTP client) with
# libnet-ssleay-perl for its --tls, openssl (s_client, key generation),
# pebble and pebble-challtestsrv (the ACME test CA and its DNS),
# promtool (from Debian's prometheus) to lint the metrics, Python's dkimpy
# with authres (an independent DKIM signer and ARC sealer, from PyPI), and
# cargo-fuzz with g++ for libFuzzer (scripts/fuzz.sh installs cargo-fuzz).
# They also mount a small tmpfs (disk-full test), so run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v swaks >/dev/null || need+=(swaks)
command -v mount >/dev/null || need+=(mount)
command -v openssl >/dev/null || need+=(openssl)
# pebble (with pebble-challtestsrv): the ACME test CA and its mock DNS.
command -v pebble >/dev/null || need+=(pebble)
# promtool (Debian's prometheus package) lints a live /metrics scrape.
command -v promtool >/dev/null || need+=(prometheus)
perl -MNet::SSLeay -e1 2>/dev/null || need+=(libnet-ssleay-perl)
# libfuzzer-sys compiles libFuzzer (C++) for the fuzz targets.
command -v g++ >/dev/null || need+=(g++)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "scripts/test.sh: missing ${need[*]}; run as root or: apt-get install ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# authres: dkimpy needs it to seal ARC sets.
if ! python3 -c 'import dkim, authres' 2>/dev/null; then
    python3 -m pip install --quiet dkimpy authres || { echo "scripts/test.sh: could not install dkimpy and authres from PyPI" >&2; exit 1; }
fi

# glommio (io_uring) needs at least 512 KiB of lockable memory per process.
memlock=$(ulimit -l)
if [[ $memlock != unlimited ]] && ((memlock < 512)); then
    ulimit -l 8192 || { echo "scripts/test.sh: ulimit -l is ${memlock} KiB; gomail needs >= 512 (raise it)" >&2; exit 1; }
fi

# Every fuzz target for GOMAIL_FUZZ_SECONDS each (default 30; 0 skips),
# from the committed corpus: a crash fails the run (scripts/fuzz.sh). A
# filtered run (arguments given) skips it. cargo test below also replays
# the corpus through the same checks.
fuzz_secs=${GOMAIL_FUZZ_SECONDS:-30}
if ((!$# && fuzz_secs > 0)); then
    scripts/fuzz.sh "$fuzz_secs"
fi

# fault-injection compiles the test-only faults (a command that panics a
# connection's task) into the binary the integration tests run; release
# builds never have it.
exec cargo test --workspace --features fault-injection "$@"
