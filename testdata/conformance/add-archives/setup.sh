# Archives with members of their own modes and owners, in every compression ADD extracts.
mkdir -p t/sub
echo a > t/a.txt
echo s > t/sub/s.txt
chmod 0600 t/a.txt
chmod 0750 t/sub
tar --sort=name --mtime=@0 --owner=1234 --group=5678 --numeric-owner -C t -cf plain.tar .
gzip -n -c plain.tar > a.tar.gz
bzip2 -c plain.tar > a.tar.bz2
xz -c plain.tar > a.tar.xz
zstd -q -c plain.tar > a.tar.zst
echo not a tarball | gzip -n > notatar.gz
rm -r t
