"""The only place that joins the protocol core (``app.oauth``) with the stores (``app.store``)."""
