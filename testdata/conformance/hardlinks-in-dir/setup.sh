ln dir/b.txt dir/a.txt
