"""The notebook side of slimtune: live frontier dashboard and the ``%slimtune`` magic.

Widgets read studies (a study's public methods and its bulk reader); studies never
import widgets.  The dashboard is opened here, given a study.

Example:
    >>> from slimtune.widgets import dashboard           # doctest: +SKIP
    >>> dashboard(study)            # or StudyDashboard(study)   # doctest: +SKIP
"""

from slimtune.widgets._dashboard import StudyDashboard, dashboard
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
    "dashboard",
    "details_html",
    "load_ipython_extension",
    "render_html",
    "unload_ipython_extension",
]
