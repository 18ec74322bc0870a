"""The desktop application's process supervision: the worker and the Streamlit server as children of
one launcher (``serve.py``), and what serving the dashboard needs (``appserver.py``: ports, flags, the
health check). Started by launcher.py and `lsdm app`; nothing here computes or draws."""
