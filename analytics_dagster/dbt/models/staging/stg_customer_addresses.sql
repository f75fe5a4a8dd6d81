-- One row per customer address.
select
    id as address_id,
    customer_id,
    status,
    country_code,
    city,
    created_at,
    updated_at
from {{ raw('customer_addresses') }}
