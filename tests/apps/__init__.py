"""WSGI apps for tests that run gunicorn on something other than ``wsgiproxy:app``."""
