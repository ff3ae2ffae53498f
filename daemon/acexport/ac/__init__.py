"""Speaking to AC: the HTTP client of its export API (``client``), how often to
ask while an export is processed (``polling``), and AC's clock (``serverclock``).

Nothing here knows of files, the ledger or the output store: the client returns
answers and a byte stream, and one export (export.py) decides what they mean.
"""
