"""How ``lianfang run`` and ``lianfang serve all`` start each service:
``python -m services.cli.service_process MODULE`` sets up logging for a log a person reads, then runs
``python -m MODULE``.

One line per record, ``HH:MM:SS LEVEL logger: message``, no colours. The Kafka clients' INFO lines
(one per connection, metadata refresh and coordinator lookup: about 190 in a minute of ``make run``)
are left out; their warnings stay. A service's own ``logging.basicConfig`` finds the root logger set
up and changes nothing. :func:`services.cli.bus.supervise` prefixes each line with the service's name.
"""

from __future__ import annotations

import logging
import runpy
import sys
import warnings

QUIET_LOGGERS = {
    "kafka": logging.WARNING,
    "aiokafka": logging.WARNING,
    "kafka.net.selector": logging.ERROR,
    "kafka.coordinator.consumer": logging.ERROR,
}
"""kafka-python's selector warns about every slow event-loop task on a busy machine, and its consumer
that a reader without a group (the registry follower) does not commit: neither is actionable."""


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # Deprecations inside third-party packages say nothing an operator can act on.
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not argv[0].startswith("services."):
        raise SystemExit("usage: python -m services.cli.service_process services.<service>")
    configure_logging()
    sys.argv = [argv[0]]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
