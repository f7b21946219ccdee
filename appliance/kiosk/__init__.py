"""The kiosk side of the appliance: camera, face capture, authorization flow, local UI.

``appliance.kiosk.capture`` finds one live, good face, picks the best frame and seals it for the
identity service (see docs/face-capture.md). This package module imports nothing heavy: OpenCV
and numpy load only when ``appliance.kiosk.capture`` is imported.
"""
