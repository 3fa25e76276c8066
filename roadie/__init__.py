"""roadie core: settings, schema, storage and the CLI shared by every flow."""
