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
    cast(totals->>'subtotal' as bigint) as subtotal,
    cast(totals->>'tax' as bigint) as tax,
    cast(totals->>'total' as bigint) as total,
    cast(totals->>'fee' as bigint) as fee,
    cast(totals->>'earnings' as bigint) as earnings,
    created_at,
    updated_at
from {{ source('analytics', 'adjustments') }}
