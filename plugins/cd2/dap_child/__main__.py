"""Entry point: ``python -m cd2.dap_child <list|sync|init|plan> ...`` (see :mod:`cd2.dap_child.runner`)."""

from cd2.dap_child.logs import configure_logging

configure_logging()

from cd2.dap_child.runner import main  # noqa: E402

raise SystemExit(main())
