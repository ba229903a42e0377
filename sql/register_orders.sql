-- register_orders: the app's bulk add/update of orders, validated all or nothing.
SET client_min_messages = warning;
SET datestyle = ISO;
-- start from an empty courier schema
DROP EXTENSION courier;
CREATE EXTENSION courier;

SELECT courier.register_orders('[
  {"order_id": 1, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "Super-sweet corn 10kg", "promised_ship_date": "2030-01-10"},
  {"order_id": 2, "seller_id": 10, "customer_phone": "01098765432", "product_name": "Super-sweet corn 5kg", "promised_ship_date": "2030-01-10", "status": "shipping_requested"}
]');
SELECT order_id, seller_id, customer_phone, product_name, status, promised_ship_date
  FROM courier.orders ORDER BY order_id;

-- an update keeps the status unless one is given
SELECT courier.register_orders('[{"order_id": 2, "seller_id": 10, "customer_phone": "01098765432", "product_name": "Super-sweet corn 5kg (new crop)", "promised_ship_date": "2030-01-12"}]');
SELECT order_id, product_name, status, promised_ship_date FROM courier.orders WHERE order_id = 2;

-- register_orders_rejects_*: each bad input has its own error, and nothing is written
SELECT courier.register_orders(NULL);
SELECT courier.register_orders('{"order_id": 3}');
SELECT courier.register_orders('[]');
SELECT courier.register_orders('[1]');
SELECT courier.register_orders('[{"order_id": 3, "seller_id": 10, "customer_phone": "010-1234-5678", "promised_ship_date": "2030-01-10"}]');
SELECT courier.register_orders('[{"order_id": null, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-01-10"}]');
SELECT courier.register_orders('[{"order_id": "3", "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-01-10"}]');
SELECT courier.register_orders('[{"order_id": 3.5, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-01-10"}]');
SELECT courier.register_orders('[{"order_id": 3, "seller_id": 10, "customer_phone": "010-1234-56789x", "product_name": "x", "promised_ship_date": "2030-01-10"}]');
SELECT courier.register_orders('[{"order_id": 3, "seller_id": 10, "customer_phone": "12345", "product_name": "x", "promised_ship_date": "2030-01-10"}]');
SELECT courier.register_orders('[{"order_id": 3, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-02-30"}]');
SELECT courier.register_orders('[{"order_id": 3, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "10/01/2030"}]');
SELECT courier.register_orders('[{"order_id": 3, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-01-10", "status": "lost"}]');
SELECT courier.register_orders('[{"order_id": 3, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-01-10", "colour": "red"}]');
SELECT courier.register_orders('[
  {"order_id": 3, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-01-10"},
  {"order_id": 3, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-01-10"}]');
SET courier.max_orders_per_request = 1;
SELECT courier.register_orders('[
  {"order_id": 3, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-01-10"},
  {"order_id": 4, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-01-10"}]');
RESET courier.max_orders_per_request;
-- a good element before a bad one is not written either
SELECT courier.register_orders('[
  {"order_id": 5, "seller_id": 10, "customer_phone": "010-1234-5678", "product_name": "x", "promised_ship_date": "2030-01-10"},
  {"order_id": 6, "seller_id": 10, "customer_phone": "bad", "product_name": "x", "promised_ship_date": "2030-01-10"}]');
SELECT count(*) AS orders FROM courier.orders;

-- request_shipping: paid orders become shipping_requested with a deadline
SELECT courier.request_shipping(ARRAY[1, 2]);
SELECT order_id, status, invoice_deadline IS NOT NULL AS has_deadline FROM courier.orders ORDER BY 1;
SELECT courier.request_shipping(ARRAY[1, 99, 98]);
SELECT courier.request_shipping(ARRAY[1, NULL]);
SELECT courier.request_shipping('{}');

-- register_invoice closes the order
SELECT courier.register_invoice(1, 'CJ-000123');
SELECT order_id, status, invoice_number FROM courier.orders WHERE order_id = 1;
SELECT courier.register_invoice(99, 'CJ-1');
SELECT courier.register_invoice(2, '');
SELECT courier.request_shipping(ARRAY[1]);
