-- One row per item of an adjustment (items[]): the transaction line it adjusts (item_id) and
-- by how much (minor units of the adjustment's currency).
select
    item.value->>'id' as adjustment_item_id,
    a.id as adjustment_id,
    a.transaction_id,
    item.value->>'item_id' as line_item_id,
    item.value->>'type' as item_type,
    cast(item.value->>'amount' as bigint) as amount,
    cast(item.value->'totals'->>'subtotal' as bigint) as subtotal,
    cast(item.value->'totals'->>'tax' as bigint) as tax,
    cast(item.value->'totals'->>'total' as bigint) as total
from {{ source('analytics', 'adjustments') }} as a,
    {{ json_array_elements('a.items', none, 'item') }}
