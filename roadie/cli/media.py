"""`roadie ingest`: register uploads and run the media pipeline on them."""
