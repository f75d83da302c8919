"""One target under atheris (libFuzzer), in a process of its own: libFuzzer ends the process when it
is done. ``python -m tests.fuzz`` starts one of these a target and reads its final statistics.

    python -m tests.fuzz.worker TARGET FOLDER -runs=N -seed=S -max_total_time=T ...
    python -m tests.fuzz.worker TARGET FOLDER .run/fuzz/router_raw-crash-...   # replay one input

``FOLDER`` is a scratch folder (the parent makes and removes it); the arguments after it go to
libFuzzer. Without a file among them, the fuzzer starts from the target's seeds.
The project's modules are instrumented for coverage; the libraries they use are not, which keeps the
run fast and the guidance on our own branches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["services", "schemas"]):
    from tests.fuzz.targets import build, run_one


def _dictionary(tokens: tuple[bytes, ...], path: Path) -> Path:
    """A libFuzzer dictionary: one quoted token a line, bytes outside printable ASCII as ``\\xNN``."""
    lines = []
    for token in tokens:
        escaped = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in token)
        lines.append(f'"{escaped}"')
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def main() -> None:
    name, folder, *libfuzzer_args = sys.argv[1:]
    target = build(Path(folder), (name,))[name]
    corpus = Path(folder) / f"corpus-{name}"
    corpus.mkdir(exist_ok=True)
    for index, seed in enumerate(target.seeds):
        (corpus / f"seed-{index}").write_bytes(seed)
    if target.tokens:
        libfuzzer_args.append(f"-dict={_dictionary(target.tokens, Path(folder) / f'{name}.dict')}")
    replay = [a for a in libfuzzer_args if not a.startswith("-")]
    inputs = replay or [str(corpus)]
    flags = [a for a in libfuzzer_args if a.startswith("-")]
    atheris.Setup([sys.argv[0], *flags, *inputs], lambda data: run_one(target, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
