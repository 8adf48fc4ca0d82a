"""SubSpec Studio's desktop front end (PySide6).

Only the worker thread touches the engine; every widget talks to it through `worker.EngineHost`, whose
signals carry plain Python data and always arrive on the GUI thread.
"""
