#!/bin/sh
# Modes git does not keep.
chmod 0644 dir/a x.sh
chmod 0755 dir dir/sub dir/sub/b
