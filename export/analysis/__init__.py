"""`qvl-compile analyze`: the module-by-module export study of the vision tower, automated."""
