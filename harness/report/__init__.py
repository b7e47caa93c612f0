"""The study's report, one concern per module: ``tables`` (load what `aggregate` wrote), ``figures``
(draw them), ``sections`` (HTML text and tables), ``page`` (assemble and write the page),
``captions`` (every figure's caption, once). The report computes nothing: every number comes
from the aggregate tables."""
