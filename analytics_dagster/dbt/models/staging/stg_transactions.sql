-- One row per transaction, its totals as numbers (minor units of currency_code, as the API's
-- strings say them); fee and earnings are null until the API sets them.
select
    id as transaction_id,
    status,
    customer_id,
    subscription_id,
    coalesce(details->'totals'->>'currency_code', currency_code) as currency_code,
    origin,
    collection_mode,
    created_at,
    updated_at,
    billed_at,
    cast(details->'totals'->>'subtotal' as bigint) as subtotal,
    cast(details->'totals'->>'discount' as bigint) as discount,
    cast(details->'totals'->>'tax' as bigint) as tax,
    cast(details->'totals'->>'total' as bigint) as total,
    cast(details->'totals'->>'grand_total' as bigint) as grand_total,
    cast(details->'totals'->>'fee' as bigint) as fee,
    cast(details->'totals'->>'earnings' as bigint) as earnings
from {{ source('analytics', 'transactions') }}
