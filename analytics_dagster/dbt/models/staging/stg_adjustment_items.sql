-- One row per item of an adjustment (items[]): the transaction line it adjusts (item_id) and
-- by how much (minor units of the adjustment's currency).
select
    item.value->>'id' as adjustment_item_id,
    a.id as adjustment_id,
    a.transaction_id,
    item.value->>'item_id' as line_item_id,
    item.value->>'type' as item_type,
    {{ amount("item.value->>'amount'") }} as amount,
    {{ amount("item.value->'totals'->>'subtotal'") }} as subtotal,
    {{ amount("item.value->'totals'->>'tax'") }} as tax,
    {{ amount("item.value->'totals'->>'total'") }} as total
from {{ raw('adjustments') }} as a,
    {{ json_array_elements('a.items', none, 'item') }}
