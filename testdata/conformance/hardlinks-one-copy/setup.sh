ln a.txt a-link.txt
