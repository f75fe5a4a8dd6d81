-- One row per adjustment (a refund, credit or chargeback of a transaction), its totals as
-- numbers (minor units of currency_code).
select
    id as adjustment_id,
    action,
    type as adjustment_type,
    transaction_id,
    subscription_id,
    customer_id,
    currency_code,
    status,
    reason,
    {{ amount("totals->>'subtotal'") }} as subtotal,
    {{ amount("totals->>'tax'") }} as tax,
    {{ amount("totals->>'total'") }} as total,
    {{ amount("totals->>'fee'") }} as fee,
    {{ amount("totals->>'earnings'") }} as earnings,
    created_at,
    updated_at
from {{ raw('adjustments') }}
