# The directories --parents recreates keep their own modes.
chmod 0750 a/b
chmod 0700 x
chmod 0755 a
