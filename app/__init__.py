"""ELT Studio's web app: `ui` (Gradio layout and wiring), `service` (the façade over core), `charts`."""
