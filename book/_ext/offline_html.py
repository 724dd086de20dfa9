"""A Sphinx extension for pages that work offline with a clean browser console (checked by tests/browser).

sphinx-thebe adds its inline configuration script to every page twice, and the second copy fails in the browser
("Identifier 'THEBE_JS_URL' has already been declared"): the copies differ only in their priority. Keep the first
copy of each script (same file, same attributes and body).
"""


def _unique_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
