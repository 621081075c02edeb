"""An example kdgrid plug-in (see the package README and kdgrid's docs/plugins.md)."""
