chmod 0750 dir/sub
chmod 0600 b.txt
