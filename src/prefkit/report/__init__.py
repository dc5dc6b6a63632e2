"""Reports: figures and self-contained HTML reports."""

from .html import lab_report_html, write_lab_report

__all__ = ["lab_report_html", "write_lab_report"]
