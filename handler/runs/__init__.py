"""The ingest path: a request body becomes runs (bytes checked by the splitter, fields by the schema),
uploaded as objects while it arrives and committed as rows at its end."""
