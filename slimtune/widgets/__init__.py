"""The notebook side of slimtune: live frontier dashboard and the ``%slimtune`` magic.

Widgets read studies; studies never import widgets (``study.dashboard()`` imports this
package lazily).

Example:
    >>> from slimtune.widgets import StudyDashboard      # doctest: +SKIP
    >>> StudyDashboard(study)                             # doctest: +SKIP
"""

from slimtune.widgets._dashboard import StudyDashboard
from slimtune.widgets._details import DetailsPane, details_html
from slimtune.widgets._magics import SlimtuneMagics, load_ipython_extension, unload_ipython_extension
from slimtune.widgets._plot import FrontierPlot
from slimtune.widgets._static import render_html
from slimtune.widgets._table import ParetoTable

__all__ = [
    "DetailsPane",
    "FrontierPlot",
    "ParetoTable",
    "SlimtuneMagics",
    "StudyDashboard",
    "details_html",
    "load_ipython_extension",
    "render_html",
    "unload_ipython_extension",
]
