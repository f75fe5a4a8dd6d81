-- One row per line of a transaction (details.line_items[]): what was billed for which price.
select
    line.value->>'id' as line_item_id,
    t.id as transaction_id,
    t.status as transaction_status,
    coalesce(t.details->'totals'->>'currency_code', t.currency_code) as currency_code,
    line.value->>'price_id' as price_id,
    line.value->'product'->>'id' as product_id,
    cast(line.value->>'quantity' as bigint) as quantity,
    {{ amount("line.value->'totals'->>'subtotal'") }} as subtotal,
    {{ amount("line.value->'totals'->>'discount'") }} as discount,
    {{ amount("line.value->'totals'->>'tax'") }} as tax,
    {{ amount("line.value->'totals'->>'total'") }} as total,
    {{ amount("line.value->'unit_totals'->>'subtotal'") }} as unit_subtotal,
    line.value->>'tax_rate' as tax_rate,
    line.value->>'proration' is not null as prorated
from {{ raw('transactions') }} as t,
    {{ json_array_elements('t.details', 'line_items', 'line') }}
