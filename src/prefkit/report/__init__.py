"""Reports: figures and self-contained HTML reports."""

from .html import assets_dir, lab_report_html, write_lab_report

__all__ = ["assets_dir", "lab_report_html", "write_lab_report"]
