{#- The elements of a JSON array, as a table `alias` with one column `value` (a JSON value), to
    join laterally: `from t, {{ json_array_elements('t.details', 'line_items', 'line') }}`.
    `key`: the array is that member of `expr` (none: `expr` is the array). The one place the
    SQL of a JSON array differs by warehouse (DuckDB's json_each, PostgreSQL's
    jsonb_array_elements); the rest of the models use `->` and `->>`, which both take. -#}
{% macro json_array_elements(expr, key, alias) -%}
    {{ return(adapter.dispatch('json_array_elements')(expr, key, alias)) }}
{%- endmacro %}

{% macro default__json_array_elements(expr, key, alias) -%}
    jsonb_array_elements({{ expr }}{% if key %}->'{{ key }}'{% endif %}) as {{ alias }}(value)
{%- endmacro %}

{% macro duckdb__json_array_elements(expr, key, alias) -%}
    json_each({{ expr }}{% if key %}->'{{ key }}'{% endif %}) as {{ alias }}
{%- endmacro %}

{#- Whether the JSON value `expr` is a string (not a number, an object, null...). -#}
{% macro json_is_string(expr) -%}
    {{ return(adapter.dispatch('json_is_string')(expr)) }}
{%- endmacro %}

{% macro default__json_is_string(expr) -%}
    jsonb_typeof({{ expr }}) = 'string'
{%- endmacro %}

{% macro duckdb__json_is_string(expr) -%}
    json_type({{ expr }}) = 'VARCHAR'
{%- endmacro %}
