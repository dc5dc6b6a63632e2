"""Reports: figures and (later) self-contained HTML reports."""
