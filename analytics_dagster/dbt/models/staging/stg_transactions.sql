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
    {{ amount("details->'totals'->>'subtotal'") }} as subtotal,
    {{ amount("details->'totals'->>'discount'") }} as discount,
    {{ amount("details->'totals'->>'tax'") }} as tax,
    {{ amount("details->'totals'->>'total'") }} as total,
    {{ amount("details->'totals'->>'grand_total'") }} as grand_total,
    {{ amount("details->'totals'->>'fee'") }} as fee,
    {{ amount("details->'totals'->>'earnings'") }} as earnings
from {{ raw('transactions') }}
