"""The core: what every floor shares and that depends on nothing else of the project.

The shard schema (``records``), intensity windows (``windows``), hemorrhage labels (``labels``),
file-name conventions (``formats``), atomic writes (``atomic``), grid geometry and its inverse
(``geometry``) and the user-error convention (``errors``). Nothing here imports ``data_prep``
or the rest of ``lesionjax`` (tests/test_import_floors.py keeps it so).
"""
