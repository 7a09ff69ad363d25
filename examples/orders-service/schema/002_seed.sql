INSERT INTO orders (item, quantity) VALUES ('coffee', 1);
