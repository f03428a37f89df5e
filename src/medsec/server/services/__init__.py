"""Server operations. Services take a SQLAlchemy session and values; they never import FastAPI."""
