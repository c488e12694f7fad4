"""Entry point: ``python -m cd2.dap_child <list|sync|init> ...`` (see :mod:`cd2.dap_child.runner`)."""

from cd2.dap_child import accelerated_reader, bulk_upsert, streaming
from cd2.dap_child.logs import configure_logging

configure_logging()
# Must run before any dap replicator module is imported.
accelerated_reader.install()
streaming.install()
bulk_upsert.install()

from cd2.dap_child.runner import main  # noqa: E402

raise SystemExit(main())
