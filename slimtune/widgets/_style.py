"""The dashboard's CSS, delivered in an HTML widget (no frontend extension needed)."""

CSS = """
<style>
.slimtune-dashboard { font-family: var(--jp-ui-font-family, system-ui, sans-serif); font-size: 13px;
  color: #222; max-width: 1180px; }
.slimtune-row { gap: 8px; }
.slimtune-header { font-size: 15px; padding: 2px 0 6px 0; border-bottom: 1px solid #e5e5e5; }
.slimtune-header .sub { color: #666; font-size: 12.5px; margin-left: 8px; }
.slimtune-header .sep { color: #bbb; margin: 0 6px; }
.slimtune-card { border: 1px solid #e5e5e5; border-radius: 6px; padding: 6px 10px; background: #fff; }
.slimtune-details { font-size: 12.5px; line-height: 1.35; }
.slimtune-details h4 { margin: 2px 0 6px 0; font-size: 14px; }
.slimtune-details-empty { color: #888; font-style: italic; padding: 24px 4px; }
.slimtune-kv { border-collapse: collapse; margin: 2px 0 6px 0; }
.slimtune-kv td, .slimtune-kv th { padding: 1px 10px 1px 0; text-align: left; }
.slimtune-kv th { color: #888; font-weight: normal; font-size: 11.5px; }
.slimtune-kv td.num { font-variant-numeric: tabular-nums; }
.slimtune-families { column-count: 2; column-gap: 14px; }
.slimtune-family { margin-top: 2px; break-inside: avoid; }
.slimtune-family b, .slimtune-line b { color: #444; }
.slimtune-family .slimtune-kv { margin-left: 10px; }
.slimtune-badge { background: #eee; color: #555; border-radius: 8px; padding: 0 7px; font-size: 11px;
  font-weight: normal; }
.slimtune-badge.slimtune-front { background: #fde2e2; color: #b22; }
.slimtune-note { color: #8a5a00; margin-bottom: 4px; }
.slimtune-line ul { margin: 0; padding-left: 18px; }
.slimtune-table select, .slimtune-table-header { font-family: var(--jp-code-font-family, ui-monospace,
  'DejaVu Sans Mono', monospace) !important; font-size: 12px !important; }
.slimtune-table-header { margin: 0; padding: 0 0 0 5px; color: #666; white-space: pre; background: none;
  border: none; }
.slimtune-tip { font-size: 12px; line-height: 1.35; padding: 2px 4px; }
.slimtune-status { color: #555; font-size: 12.5px; }
.slimtune-status .err { color: #b00020; }
.slimtune-status .ok { color: #1b7a2e; }
.slimtune-selected { font-size: 12.5px; }
.slimtune-selected .none { color: #8a5a00; }
.slimtune-progress-label { font-size: 12.5px; color: #444; font-variant-numeric: tabular-nums; }
.slimtune-legend { font-size: 12px; color: #444; display: flex; flex-wrap: wrap; gap: 4px 14px;
  padding-left: 66px; }
.slimtune-legend-item svg { vertical-align: -1px; margin-right: 4px; }
</style>
"""
