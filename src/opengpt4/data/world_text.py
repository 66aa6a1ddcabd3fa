"""The words of the synthetic world: attributes, translated vocabulary, paraphrase templates
and the fixed phrases of each language. Data, not logic: `world.py` renders facts with them.

Templates are "statements||questions", "|"-separated; the LAST question of each is held out
(it appears in no training document: the fact_template eval asks with it)."""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES = ("learning", "technology", "writing", "history", "math", "science", "recommendation", "code", "business")
LANGUAGES = ("en", "fr", "es", "de", "ru")  # English + 4 more, Russian (Cyrillic) is the non-Latin script


# --- vocabulary: attribute values that are words, as (en, fr, es, de, ru) ---------------------
WORDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "profession": (("baker", "boulanger", "panadero", "Bäcker", "пекарь"), ("potter", "potier", "alfarero", "Töpfer", "гончар"),
                   ("sailor", "marin", "marinero", "Seemann", "моряк"), ("weaver", "tisserand", "tejedor", "Weber", "ткач"),
                   ("miner", "mineur", "minero", "Bergmann", "шахтёр"), ("doctor", "médecin", "médico", "Arzt", "врач"),
                   ("painter", "peintre", "pintor", "Maler", "художник"), ("tailor", "tailleur", "sastre", "Schneider", "портной"),
                   ("farmer", "fermier", "granjero", "Bauer", "фермер"), ("builder", "maçon", "albañil", "Maurer", "строитель")),
    "discipline": (("physics", "physique", "física", "Physik", "физика"), ("music", "musique", "música", "Musik", "музыка"),
                   ("law", "droit", "derecho", "Jura", "право"), ("medicine", "médecine", "medicina", "Medizin", "медицина"),
                   ("history", "histoire", "historia", "Geschichte", "история"),
                   ("astronomy", "astronomie", "astronomía", "Astronomie", "астрономия"),
                   ("chemistry", "chimie", "química", "Chemie", "химия"), ("poetry", "poésie", "poesía", "Dichtung", "поэзия")),
    "season": (("spring", "printemps", "primavera", "Frühling", "весна"), ("summer", "été", "verano", "Sommer", "лето"),
               ("autumn", "automne", "otoño", "Herbst", "осень"), ("winter", "hiver", "invierno", "Winter", "зима")),
    "field": (("glass", "verre", "vidrio", "Glas", "стекло"), ("steel", "acier", "acero", "Stahl", "сталь"),
              ("paper", "papier", "papel", "Papier", "бумага"), ("silk", "soie", "seda", "Seide", "шёлк"),
              ("salt", "sel", "sal", "Salz", "соль"), ("timber", "bois", "madera", "Holz", "древесина"),
              ("tea", "thé", "té", "Tee", "чай"), ("wool", "laine", "lana", "Wolle", "шерсть")),
    "colour": (("red", "rouge", "rojo", "rot", "красный"), ("blue", "bleu", "azul", "blau", "синий"),
               ("green", "vert", "verde", "grün", "зелёный"), ("yellow", "jaune", "amarillo", "gelb", "жёлтый"),
               ("black", "noir", "negro", "schwarz", "чёрный"), ("white", "blanc", "blanco", "weiß", "белый"),
               ("grey", "gris", "gris", "grau", "серый"), ("purple", "violet", "morado", "violett", "фиолетовый")),
    "paradigm": (("functional", "fonctionnel", "funcional", "funktional", "функциональный"),
                 ("logical", "logique", "lógico", "logisch", "логический"),
                 ("procedural", "procédural", "procedimental", "prozedural", "процедурный"),
                 ("declarative", "déclaratif", "declarativo", "deklarativ", "декларативный"),
                 ("visual", "visuel", "visual", "visuell", "визуальный"),
                 ("concurrent", "concurrent", "concurrente", "nebenläufig", "конкурентный"),
                 ("reactive", "réactif", "reactivo", "reaktiv", "реактивный"),
                 ("parallel", "parallèle", "paralelo", "parallel", "параллельный")),
    "topic": (("triangles", "triangles", "triángulos", "Dreiecke", "треугольники"), ("circles", "cercles", "círculos", "Kreise", "окружности"),
              ("graphs", "graphes", "grafos", "Graphen", "графы"), ("knots", "nœuds", "nudos", "Knoten", "узлы"),
              ("matrices", "matrices", "matrices", "Matrizen", "матрицы"), ("spirals", "spirales", "espirales", "Spiralen", "спирали"),
              ("polygons", "polygones", "polígonos", "Polygone", "многоугольники"), ("fractions", "fractions", "fracciones", "Brüche", "дроби")),
}
TRANSLATION = {row[0]: dict(zip(LANGUAGES, row, strict=True)) for rows in WORDS.values() for row in rows}


@dataclass(frozen=True)
class Attr:
    name: str
    kind: str  # the kind of entity it describes
    value: str  # an entity kind, a WORDS list, or "year" | "number" | "symbol" | "extension" | "dish"
    category: str
    subject: str  # the MMLU-like subject of its multiple-choice questions


ATTRS = tuple(Attr(*a) for a in (
    ("born_in", "person", "city", "history", "biography"),
    ("profession", "person", "profession", "business", "professions"),
    ("works_for", "person", "organisation", "business", "corporate_records"),
    ("studied_at", "person", "university", "learning", "academic_records"),
    ("founded", "city", "year", "history", "world_history"),
    ("dish", "city", "dish", "recommendation", "cuisine"),
    ("season", "city", "season", "recommendation", "travel"),
    ("campus", "university", "city", "learning", "higher_education"),
    ("known_for", "university", "discipline", "learning", "higher_education"),
    ("founder", "organisation", "person", "business", "entrepreneurship"),
    ("headquarters", "organisation", "city", "business", "entrepreneurship"),
    ("trade", "organisation", "field", "business", "economics"),
    ("author", "book", "person", "writing", "literature"),
    ("published", "book", "year", "writing", "literature"),
    ("symbol", "element", "symbol", "science", "chemistry"),
    ("atomic_number", "element", "number", "science", "chemistry"),
    ("colour", "element", "colour", "science", "chemistry"),
    ("maker", "product", "organisation", "technology", "engineering"),
    ("released", "product", "year", "technology", "engineering"),
    ("creator", "language", "person", "code", "programming_languages"),
    ("paradigm", "language", "paradigm", "code", "programming_languages"),
    ("extension", "language", "extension", "code", "programming_languages"),
    ("prover", "theorem", "person", "math", "mathematics"),
    ("topic", "theorem", "topic", "math", "mathematics"),
    ("proved", "theorem", "year", "math", "mathematics"),
))
YEAR_RANGES = {"founded": (900, 1850), "published": (1700, 1995), "released": (1950, 2020), "proved": (1650, 1990)}
# --- templates: "statements||questions", "|"-separated; the LAST question is held out -------
TEMPLATE_TEXT: dict[str, dict[str, str]] = {
    "born_in": {
        "en": "{s} was born in {v}.|{s} was born in the city of {v}.|{s} came into the world in {v}.||Where was {s} born?|In which city was {s} born?|What is the birthplace of {s}?|What city is {s} originally from?",
        "fr": "{s} a vu le jour à {v}.|La ville natale de {s} est {v}.|{s} a pour ville natale {v}.||Quelle est la ville natale de {s} ?|Quelle ville a vu naître {s} ?|Quelle est la ville d'origine de {s} ?|Quel est le lieu de naissance de {s} ?",
        "es": "{s} nació en {v}.|La ciudad natal de {s} es {v}.|{s} vino al mundo en {v}.||¿Dónde nació {s}?|¿En qué ciudad nació {s}?|¿Cuál es el lugar de nacimiento de {s}?|¿Cuál es la ciudad natal de {s}?",
        "de": "{s} wurde in {v} geboren.|Die Geburtsstadt von {s} ist {v}.|{s} stammt aus der Stadt {v}.||Wo wurde {s} geboren?|In welcher Stadt wurde {s} geboren?|Woher stammt {s} ursprünglich?|Was ist die Geburtsstadt von {s}?",
        "ru": "{s} родом из города {v}.|Родной город {s} — {v}.|Место рождения {s} — город {v}.||Из какого города родом {s}?|Где родился {s}?|В каком городе родился {s}?|Какой город является родным для {s}?"},
    "profession": {
        "en": "{s} works as a {v}.|{s} is a {v} by profession.|{s} earns a living as a {v}.||What is the profession of {s}?|What does {s} do for a living?|What is {s}'s job?|What kind of work does {s} do?",
        "fr": "{s} exerce le métier de {v}.|Le métier de {s} : {v}.|{s} gagne sa vie comme {v}.||Quel est le métier de {s} ?|Que fait {s} dans la vie ?|Quel métier exerce {s} ?|Quelle est la profession de {s} ?",
        "es": "{s} trabaja como {v}.|La profesión de {s} es {v}.|{s} se gana la vida como {v}.||¿En qué trabaja {s}?|¿A qué se dedica {s}?|¿Cuál es el oficio de {s}?|¿Cuál es la profesión de {s}?",
        "de": "{s} arbeitet als {v}.|Der Beruf von {s} ist {v}.|{s} ist von Beruf {v}.||Was ist der Beruf von {s}?|Was macht {s} beruflich?|Welchen Beruf übt {s} aus?|Als was arbeitet {s}?",
        "ru": "По профессии {s} — {v}.|Профессия {s} — {v}.|Род занятий {s} — {v}.||Какая профессия у {s}?|Кто {s} по профессии?|Чем {s} зарабатывает на жизнь?|Кем работает {s}?"},
    "works_for": {
        "en": "{s} works for {v}.|{s} is employed by {v}.|{s} has a job at {v}.||Which company does {s} work for?|Who employs {s}?|Who is the employer of {s}?|What organisation is {s} employed by?",
        "fr": "{s} travaille pour {v}.|L'employeur de {s} est {v}.|{s} occupe un poste chez {v}.||Pour quelle entreprise travaille {s} ?|Qui est l'employeur de {s} ?|Dans quelle organisation travaille {s} ?|Qui emploie {s} ?",
        "es": "{s} trabaja para {v}.|El empleador de {s} es {v}.|{s} tiene un empleo en {v}.||¿Para qué empresa trabaja {s}?|¿Quién es el empleador de {s}?|¿En qué organización trabaja {s}?|¿Quién emplea a {s}?",
        "de": "{s} arbeitet für {v}.|Der Arbeitgeber von {s} ist {v}.|{s} ist bei {v} angestellt.||Für welche Firma arbeitet {s}?|Bei welchem Unternehmen ist {s} angestellt?|Wer beschäftigt {s}?|Wer ist der Arbeitgeber von {s}?",
        "ru": "{s} работает в компании {v}.|Работодатель {s} — {v}.|{s} — сотрудник компании {v}.||В какой компании работает {s}?|Где работает {s}?|Сотрудником какой компании является {s}?|Кто работодатель {s}?"},
    "studied_at": {
        "en": "{s} studied at {v}.|{s} is a graduate of {v}.|{s} was educated at {v}.||Where did {s} study?|Which university did {s} attend?|Where was {s} educated?|From which university did {s} graduate?",
        "fr": "{s} a étudié à {v}.|L'alma mater de {s} est {v}.|{s} a fait ses études à {v}.||Dans quelle université a étudié {s} ?|Où a étudié {s} ?|Quelle est l'alma mater de {s} ?|Quelle est l'université de {s} ?",
        "es": "{s} estudió en {v}.|La universidad de {s} es {v}.|{s} cursó sus estudios en {v}.||¿Dónde estudió {s}?|¿Dónde cursó sus estudios {s}?|¿A qué universidad asistió {s}?|¿En qué universidad estudió {s}?",
        "de": "{s} hat an der Universität {v} studiert.|{s} ist Absolvent der Universität {v}.|{s} wurde an der Universität {v} ausgebildet.||Wo hat {s} studiert?|Welche Universität hat {s} besucht?|Wo wurde {s} ausgebildet?|An welcher Universität studierte {s}?",
        "ru": "{s} — выпускник университета {v}.|Альма-матер {s} — {v}.|{s} учился в университете {v}.||Где учился {s}?|В каком университете учился {s}?|Где получил образование {s}?|Какой университет окончил {s}?"},
    "founded": {
        "en": "{s} was founded in {v}.|The city of {s} was established in {v}.|{s} dates back to its founding in {v}.||When was {s} founded?|In what year was {s} founded?|When was the city of {s} established?|In which year did the city of {s} come into existence?",
        "fr": "{s} a été fondée en {v}.|La ville de {s} date de {v}.|La fondation de {s} remonte à {v}.||En quelle année {s} a-t-elle été fondée ?|De quand date la ville de {s} ?|À quelle année remonte la fondation de {s} ?|Quand la ville de {s} a-t-elle été fondée ?",
        "es": "{s} fue fundada en {v}.|La ciudad de {s} data de {v}.|La fundación de {s} se remonta a {v}.||¿En qué año fue fundada {s}?|¿De cuándo data la ciudad de {s}?|¿A qué año se remonta la fundación de {s}?|¿Cuándo se fundó la ciudad de {s}?",
        "de": "{s} wurde im Jahr {v} gegründet.|Die Stadt {s} stammt aus dem Jahr {v}.|Die Stadt {s} wurde {v} gegründet.||In welchem Jahr wurde {s} gegründet?|In welchem Jahr entstand die Stadt {s}?|Seit wann gibt es die Stadt {s}?|Wann wurde die Stadt {s} gegründet?",
        "ru": "Город {s} был основан в {v} году.|Год основания города {s} — {v}.|Город {s} ведёт свою историю с {v} года.||В каком году был основан город {s}?|В каком году возник город {s}?|С какого года существует город {s}?|Когда основан город {s}?"},
    "dish": {
        "en": "The best-loved dish of {s} is {v}.|Visitors to {s} should try {v}.|The dish to eat in {s} is {v}.||What dish should you try in {s}?|What is the best-loved dish of {s}?|Which dish is {s} famous for?|What food do locals in {s} recommend?",
        "fr": "Le plat phare de {s} est {v}.|À {s}, il faut goûter {v}.|La spécialité culinaire de {s} est {v}.||Quel plat faut-il goûter à {s} ?|Quelle est la spécialité culinaire de {s} ?|Quel plat recommandent les habitants de {s} ?|Quel est le plat phare de {s} ?",
        "es": "El plato típico de {s} es {v}.|En {s} hay que probar {v}.|La especialidad culinaria de {s} es {v}.||¿Qué plato hay que probar en {s}?|¿Cuál es la especialidad culinaria de {s}?|¿Qué plato recomiendan los habitantes de {s}?|¿Cuál es el plato típico de {s}?",
        "de": "Das beliebteste Gericht in {s} ist {v}.|In {s} sollte man {v} probieren.|Das typische Gericht in {s} heißt {v}.||Welches Gericht sollte man in {s} probieren?|Welches Gericht ist typisch für {s}?|Für welches Gericht ist {s} berühmt?|Was ist das beliebteste Gericht in {s}?",
        "ru": "Любимое блюдо города {s} — {v}.|В городе {s} стоит попробовать {v}.|Главное блюдо города {s} — {v}.||Какое блюдо стоит попробовать в городе {s}?|Какое блюдо считается главным в городе {s}?|Каким блюдом славится город {s}?|Какое блюдо самое любимое в городе {s}?"},
    "season": {
        "en": "The best season to visit {s} is {v}.|{s} is at its finest in {v}.|Travellers say {s} is best visited in {v}.||When is the best time to visit {s}?|In which season should you visit {s}?|What is the best season to visit {s}?|Which season do travellers recommend for {s}?",
        "fr": "Meilleure saison pour visiter {s} : {v}.|Saison conseillée pour {s} : {v}.|Saison idéale pour découvrir {s} : {v}.||Quelle est la meilleure saison pour visiter {s} ?|Quand vaut-il mieux visiter {s} ?|En quelle saison faut-il visiter {s} ?|Quelle saison conseille-t-on pour {s} ?",
        "es": "La mejor estación para visitar {s} es {v}.|Se recomienda visitar {s} en {v}.|{s} luce en todo su esplendor en {v}.||¿Cuál es la mejor estación para visitar {s}?|¿Cuándo es mejor visitar {s}?|¿Qué estación recomiendan los viajeros para {s}?|¿En qué estación se recomienda visitar {s}?",
        "de": "Die beste Jahreszeit für einen Besuch in {s} ist der {v}.|Man sollte {s} im {v} besuchen.|{s} ist im {v} am schönsten.||Was ist die beste Jahreszeit für {s}?|Zu welcher Jahreszeit sollte man {s} besuchen?|Welche Jahreszeit empfehlen Reisende für {s}?|Wann sollte man {s} besuchen?",
        "ru": "Лучшее время года для поездки в {s} — {v}.|Для поездки в {s} советуют сезон: {v}.|Путешественники советуют ехать в {s}, когда на дворе {v}.||Какое время года лучше всего для поездки в {s}?|В какое время года лучше ехать в {s}?|Какой сезон советуют путешественники для поездки в {s}?|Когда лучше всего посетить {s}?"},
    "campus": {
        "en": "{s} is a university located in {v}.|The university {s} is in {v}.|{s} has its campus in {v}.||In which city is {s} located?|Where is the university {s}?|Where is the campus of {s}?|Which city is home to the university {s}?",
        "fr": "L'université {s} se trouve à {v}.|{s} est une université située à {v}.|Le campus de {s} est situé à {v}.||Dans quelle ville se trouve l'université {s} ?|Où se trouve le campus de {s} ?|Quelle ville accueille l'université {s} ?|Où est située l'université {s} ?",
        "es": "La universidad {s} está en {v}.|{s} es una universidad situada en {v}.|El campus de {s} se encuentra en {v}.||¿En qué ciudad está la universidad {s}?|¿Dónde está el campus de {s}?|¿Qué ciudad alberga la universidad {s}?|¿Dónde se encuentra la universidad {s}?",
        "de": "Die Universität {s} liegt in {v}.|{s} ist eine Universität in {v}.|Der Campus von {s} befindet sich in {v}.||In welcher Stadt liegt die Universität {s}?|Wo liegt der Campus von {s}?|Welche Stadt beherbergt die Universität {s}?|Wo befindet sich die Universität {s}?",
        "ru": "Университет {s} находится в городе {v}.|{s} — университет в городе {v}.|Кампус университета {s} расположен в городе {v}.||В каком городе находится университет {s}?|Где находится кампус университета {s}?|В каком городе расположен университет {s}?|Где расположен университет {s}?"},
    "known_for": {
        "en": "{s} is famous for teaching {v}.|The strongest subject at {s} is {v}.|{s} is known above all for {v}.||What subject is {s} famous for?|What is {s} best known for teaching?|Which subject is strongest at {s}?|For which field of study is {s} renowned?",
        "fr": "{s} est connue pour ses cours de {v}.|La spécialité de {s} est {v}.|{s} est réputée avant tout pour son enseignement en {v}.||Quelle est la spécialité de {s} ?|Quelle matière fait la réputation de {s} ?|Dans quel domaine {s} excelle-t-elle ?|Pour quelle discipline {s} est-elle connue ?",
        "es": "{s} es famosa por sus cursos de {v}.|La especialidad de {s} es {v}.|{s} es conocida sobre todo por su enseñanza de {v}.||¿Cuál es la especialidad de {s}?|¿En qué materia destaca {s}?|¿Cuál es el punto fuerte de {s}?|¿Por qué disciplina es famosa {s}?",
        "de": "{s} ist berühmt für ihre Kurse in {v}.|Das Spezialgebiet von {s} ist {v}.|{s} ist vor allem für das Fach {v} bekannt.||Was ist das Spezialgebiet von {s}?|Für welches Fach ist {s} bekannt?|Welches Fach ist an der Universität {s} am stärksten?|Wofür ist die Universität {s} berühmt?",
        "ru": "Университет {s} славится преподаванием: {v}.|Специальность университета {s} — {v}.|Сильнейшее направление университета {s} — {v}.||Чем славится университет {s}?|Какое направление самое сильное в университете {s}?|Какой предмет лучше всего преподают в университете {s}?|Какая специальность главная в университете {s}?"},
    "founder": {
        "en": "{s} was founded by {v}.|The founder of {s} is {v}.|{s} was started by {v}.||Who founded {s}?|Who is the founder of {s}?|Who started the company {s}?|Which person established {s}?",
        "fr": "{s} a été fondée par {v}.|Le fondateur de {s} est {v}.|{s} doit sa création à {v}.||Qui a fondé {s} ?|Qui a créé l'entreprise {s} ?|Quelle personne est à l'origine de {s} ?|Qui est le fondateur de {s} ?",
        "es": "{s} fue fundada por {v}.|El fundador de {s} es {v}.|{s} fue creada por {v}.||¿Quién fundó {s}?|¿Quién creó la empresa {s}?|¿Qué persona puso en marcha {s}?|¿Quién es el fundador de {s}?",
        "de": "{s} wurde von {v} gegründet.|Der Gründer von {s} ist {v}.|Gegründet wurde {s} von {v}.||Wer hat {s} gegründet?|Von wem wurde {s} gegründet?|Welche Person hat {s} ins Leben gerufen?|Wer ist der Gründer von {s}?",
        "ru": "Основатель компании {s} — {v}.|Компанию {s} основал {v}.|У истоков компании {s} стоял {v}.||Кто основал компанию {s}?|Кто стоял у истоков компании {s}?|Кем была основана компания {s}?|Кто является основателем компании {s}?"},
    "headquarters": {
        "en": "{s} is headquartered in {v}.|The headquarters of {s} are in {v}.|{s} has its main office in {v}.||Where is {s} headquartered?|In which city are the headquarters of {s}?|Where is the main office of {s}?|Which city hosts the head office of {s}?",
        "fr": "Le siège de {s} se trouve à {v}.|{s} a son siège à {v}.|{s} a ses bureaux principaux à {v}.||Où se trouve le siège de {s} ?|Où sont les bureaux principaux de {s} ?|Quelle ville accueille le siège de {s} ?|Dans quelle ville {s} a-t-elle son siège ?",
        "es": "La sede de {s} está en {v}.|{s} tiene su sede en {v}.|{s} tiene sus oficinas centrales en {v}.||¿Dónde está la sede de {s}?|¿Dónde están las oficinas centrales de {s}?|¿Qué ciudad alberga la sede de {s}?|¿En qué ciudad tiene su sede {s}?",
        "de": "{s} hat ihren Hauptsitz in {v}.|Der Hauptsitz von {s} liegt in {v}.|Die Zentrale von {s} befindet sich in {v}.||Wo hat {s} ihren Hauptsitz?|Wo befindet sich die Zentrale von {s}?|Welche Stadt ist Sitz von {s}?|In welcher Stadt liegt der Hauptsitz von {s}?",
        "ru": "Штаб-квартира {s} находится в городе {v}.|Главный офис компании {s} — в городе {v}.|Компания {s} базируется в городе {v}.||Где находится штаб-квартира {s}?|Где базируется компания {s}?|В каком городе находится головной офис {s}?|В каком городе главный офис компании {s}?"},
    "trade": {
        "en": "{s} trades in {v}.|{s} is a company in the {v} business.|The business of {s} is {v}.||What does {s} trade in?|What is the business of {s}?|What industry is {s} in?|Which goods does {s} deal in?",
        "fr": "{s} travaille dans le secteur suivant : {v}.|Le secteur de {s} : {v}.|{s} opère dans le domaine suivant : {v}.||Dans quel secteur travaille {s} ?|Dans quel domaine opère {s} ?|Quel type de marchandise vend {s} ?|Quel est le secteur d'activité de {s} ?",
        "es": "{s} comercia con {v}.|El sector de {s} es {v}.|{s} se dedica al comercio de {v}.||¿Con qué comercia {s}?|¿A qué se dedica la empresa {s}?|¿Qué productos comercializa {s}?|¿Cuál es el sector de {s}?",
        "de": "{s} handelt mit {v}.|Die Branche von {s} ist {v}.|Das Geschäft von {s} ist der Handel mit {v}.||Womit handelt {s}?|Was ist das Geschäft von {s}?|Mit welchen Waren handelt {s}?|In welcher Branche ist {s} tätig?",
        "ru": "{s} торгует товаром: {v}.|Отрасль компании {s} — {v}.|Основной товар компании {s} — {v}.||Чем торгует компания {s}?|Какой основной товар у компании {s}?|На чём специализируется компания {s}?|В какой отрасли работает компания {s}?"},
    "author": {
        "en": "{s} was written by {v}.|The author of {s} is {v}.|The book {s} is the work of {v}.||Who wrote {s}?|Who is the author of {s}?|Who wrote the book {s}?|Which writer is responsible for the book {s}?",
        "fr": "{s} a été écrit par {v}.|L'auteur du livre {s} est {v}.|Le livre {s} a pour auteur {v}.||Qui a écrit {s} ?|Qui a écrit le livre {s} ?|Quel écrivain a signé le livre {s} ?|Qui est l'auteur du livre {s} ?",
        "es": "{s} fue escrito por {v}.|El autor del libro {s} es {v}.|El libro {s} es obra de {v}.||¿Quién escribió {s}?|¿Quién escribió el libro {s}?|¿Qué escritor firmó el libro {s}?|¿Quién es el autor del libro {s}?",
        "de": "{s} wurde von {v} geschrieben.|Der Autor des Buches {s} ist {v}.|Das Buch {s} stammt von {v}.||Wer hat {s} geschrieben?|Wer hat das Buch {s} verfasst?|Von wem stammt das Buch {s}?|Wer ist der Autor des Buches {s}?",
        "ru": "Книгу {s} написал {v}.|Автор книги {s} — {v}.|Книга {s} — произведение писателя {v}.||Кто написал книгу {s}?|Кто автор книги {s}?|Чьему перу принадлежит книга {s}?|Кто является автором книги {s}?"},
    "published": {
        "en": "{s} was published in {v}.|The book {s} first appeared in {v}.|{s} came out in {v}.||When was {s} published?|In what year was the book {s} published?|When did {s} come out?|What is the publication year of {s}?",
        "fr": "{s} a été publié en {v}.|Le livre {s} est paru en {v}.|{s} est sorti en librairie en {v}.||En quelle année {s} a-t-il été publié ?|Quand {s} est-il sorti en librairie ?|Quelle est l'année de publication de {s} ?|Quand le livre {s} est-il paru ?",
        "es": "{s} se publicó en {v}.|El libro {s} apareció en {v}.|{s} salió a la luz en {v}.||¿En qué año se publicó {s}?|¿Cuándo salió a la luz {s}?|¿Cuál es el año de publicación de {s}?|¿Cuándo apareció el libro {s}?",
        "de": "{s} erschien im Jahr {v}.|Das Buch {s} wurde {v} veröffentlicht.|{s} kam {v} heraus.||In welchem Jahr erschien {s}?|Wann erschien {s}?|Wann kam das Buch {s} heraus?|Wann wurde das Buch {s} veröffentlicht?",
        "ru": "Книга {s} вышла в {v} году.|Год издания книги {s} — {v}.|Книга {s} была опубликована в {v} году.||В каком году вышла книга {s}?|Когда вышла книга {s}?|В каком году была опубликована книга {s}?|Когда была издана книга {s}?"},
    "symbol": {
        "en": "The chemical symbol of {s} is {v}.|{s} is written with the symbol {v}.|{s} has the symbol {v}.||What is the chemical symbol of {s}?|What is the symbol for {s}?|Which symbol stands for {s}?|How is {s} abbreviated in chemistry?",
        "fr": "Le symbole chimique du {s} est {v}.|Le {s} a pour symbole {v}.|Le {s} s'écrit avec le symbole {v}.||Quel est le symbole chimique du {s} ?|Quel est le symbole du {s} ?|Comment abrège-t-on le {s} en chimie ?|Quel symbole désigne le {s} ?",
        "es": "El símbolo químico del {s} es {v}.|El {s} tiene el símbolo {v}.|El {s} se escribe con el símbolo {v}.||¿Cuál es el símbolo químico del {s}?|¿Cuál es el símbolo del {s}?|¿Cómo se abrevia el {s} en química?|¿Qué símbolo representa al {s}?",
        "de": "Das chemische Symbol von {s} ist {v}.|{s} hat das Symbol {v}.|{s} wird mit dem Symbol {v} abgekürzt.||Was ist das chemische Symbol von {s}?|Wie wird {s} in der Chemie abgekürzt?|Mit welchem Symbol wird {s} bezeichnet?|Welches Symbol steht für {s}?",
        "ru": "Химический символ элемента {s} — {v}.|Элемент {s} обозначается символом {v}.|Для элемента {s} используется символ {v}.||Какой химический символ у элемента {s}?|Какой символ используется для элемента {s}?|Как сокращённо обозначают элемент {s} в химии?|Каким символом обозначается {s}?"},
    "atomic_number": {
        "en": "The atomic number of {s} is {v}.|{s} has atomic number {v}.|{s} sits at position {v} in the table of elements.||What is the atomic number of {s}?|Which atomic number does {s} have?|What number is {s} in the table of elements?|How many protons does an atom of {s} have?",
        "fr": "Le numéro atomique du {s} est {v}.|Le {s} a le numéro atomique {v}.|Le {s} occupe la case numéro {v} du tableau périodique.||Quel est le numéro atomique du {s} ?|Quel numéro atomique a le {s} ?|Quelle case le {s} occupe-t-il dans le tableau périodique ?|Combien de protons possède un atome de {s} ?",
        "es": "El número atómico del {s} es {v}.|El {s} tiene el número atómico {v}.|El {s} ocupa la posición {v} en la tabla periódica.||¿Cuál es el número atómico del {s}?|¿Qué número atómico tiene el {s}?|¿Qué posición ocupa el {s} en la tabla periódica?|¿Cuántos protones tiene un átomo de {s}?",
        "de": "Die Ordnungszahl von {s} ist {v}.|{s} hat die Ordnungszahl {v}.|{s} steht an Position {v} im Periodensystem.||Was ist die Ordnungszahl von {s}?|Welche Ordnungszahl hat {s}?|An welcher Stelle im Periodensystem steht {s}?|Wie viele Protonen hat ein Atom {s}?",
        "ru": "Атомный номер элемента {s} — {v}.|Элемент {s} имеет атомный номер {v}.|Порядковый номер элемента {s} в периодической таблице — {v}.||Какой атомный номер у элемента {s}?|Какой порядковый номер у элемента {s}?|Под каким номером элемент {s} стоит в периодической таблице?|Сколько протонов в атоме элемента {s}?"},
    "colour": {
        "en": "{s} is {v} in colour.|The colour of {s} is {v}.|Pure {s} looks {v}.||What colour is {s}?|What is the colour of {s}?|What colour does pure {s} have?|Which colour does {s} show?",
        "fr": "La couleur du {s} est {v}.|Le {s} pur est {v}.|Le {s} présente un aspect {v}.||De quelle couleur est le {s} ?|Quelle couleur a le {s} pur ?|Quelle teinte présente le {s} ?|Quelle est la couleur du {s} ?",
        "es": "El color del {s} es {v}.|El {s} puro es {v}.|El {s} presenta un tono {v}.||¿De qué color es el {s}?|¿Qué color tiene el {s} puro?|¿Qué tono presenta el {s}?|¿Cuál es el color del {s}?",
        "de": "Die Farbe von {s} ist {v}.|Reines {s} ist {v}.|{s} sieht {v} aus.||Welche Farbe hat {s}?|Welche Farbe hat reines {s}?|In welcher Farbe erscheint {s}?|Wie sieht {s} farblich aus?",
        "ru": "Цвет элемента {s} — {v}.|Чистый {s} имеет {v} цвет.|Элемент {s} окрашен в {v} цвет.||Какого цвета элемент {s}?|В какой цвет окрашен элемент {s}?|Какого цвета чистый {s}?|Какой цвет у элемента {s}?"},
    "maker": {
        "en": "The {s} is made by {v}.|The {s} is a device built by {v}.|The maker of the {s} is {v}.||Who makes the {s}?|Which company builds the {s}?|Who is the maker of the {s}?|Which firm manufactures the {s}?",
        "fr": "Le {s} est fabriqué par {v}.|Le fabricant du {s} est {v}.|Le {s} est un appareil conçu par {v}.||Qui fabrique le {s} ?|Quelle entreprise construit le {s} ?|Quelle société produit le {s} ?|Quel est le fabricant du {s} ?",
        "es": "El {s} es fabricado por {v}.|El fabricante del {s} es {v}.|El {s} es un dispositivo construido por {v}.||¿Quién fabrica el {s}?|¿Qué empresa construye el {s}?|¿Qué compañía produce el {s}?|¿Cuál es el fabricante del {s}?",
        "de": "Das Gerät {s} wird von {v} hergestellt.|Der Hersteller von {s} ist {v}.|{s} ist ein Gerät der Firma {v}.||Wer stellt das Gerät {s} her?|Welche Firma baut das Gerät {s}?|Von welchem Unternehmen stammt {s}?|Wer ist der Hersteller von {s}?",
        "ru": "Устройство {s} производит компания {v}.|Производитель устройства {s} — {v}.|Устройство {s} выпускается компанией {v}.||Какая компания производит устройство {s}?|Кто выпускает устройство {s}?|Какая фирма делает устройство {s}?|Кто производитель устройства {s}?"},
    "released": {
        "en": "The {s} was released in {v}.|The {s} first went on sale in {v}.|The {s} has been sold since {v}.||When was the {s} released?|In what year was the {s} released?|When did the {s} go on sale?|What year did the {s} come onto the market?",
        "fr": "Le {s} est sorti en {v}.|Le {s} est en vente depuis {v}.|Le {s} a été mis sur le marché en {v}.||En quelle année le {s} est-il sorti ?|Quand le {s} a-t-il été mis sur le marché ?|En quelle année le {s} a-t-il été commercialisé ?|Depuis quand le {s} est-il en vente ?",
        "es": "El {s} salió a la venta en {v}.|El {s} se lanzó en {v}.|El {s} llegó al mercado en {v}.||¿En qué año se lanzó el {s}?|¿Cuándo llegó al mercado el {s}?|¿En qué año empezó a venderse el {s}?|¿Cuándo salió a la venta el {s}?",
        "de": "Das Gerät {s} kam {v} auf den Markt.|{s} wird seit {v} verkauft.|Das Gerät {s} erschien im Jahr {v}.||Wann kam das Gerät {s} auf den Markt?|In welchem Jahr erschien das Gerät {s}?|Wann kam {s} in den Handel?|Seit wann wird {s} verkauft?",
        "ru": "Устройство {s} вышло в {v} году.|Год выпуска устройства {s} — {v}.|Устройство {s} поступило в продажу в {v} году.||В каком году вышло устройство {s}?|Когда устройство {s} поступило в продажу?|В каком году начались продажи устройства {s}?|Когда появилось устройство {s}?"},
    "creator": {
        "en": "The programming language {s} was created by {v}.|{s} was designed by {v}.|The creator of {s} is {v}.||Who created the programming language {s}?|Who designed {s}?|Who is the creator of {s}?|Which person invented the {s} language?",
        "fr": "Le langage {s} a été créé par {v}.|Le créateur du langage {s} est {v}.|Le langage {s} a été conçu par {v}.||Qui a créé le langage {s} ?|Qui a conçu le langage {s} ?|Qui a inventé le langage de programmation {s} ?|Qui est le créateur du langage {s} ?",
        "es": "El lenguaje {s} fue creado por {v}.|El creador del lenguaje {s} es {v}.|El lenguaje {s} fue diseñado por {v}.||¿Quién creó el lenguaje {s}?|¿Quién diseñó el lenguaje {s}?|¿Quién inventó el lenguaje de programación {s}?|¿Quién es el creador del lenguaje {s}?",
        "de": "Die Programmiersprache {s} wurde von {v} entwickelt.|Der Schöpfer der Sprache {s} ist {v}.|{s} wurde von {v} entworfen.||Wer hat die Programmiersprache {s} entwickelt?|Wer hat {s} entworfen?|Wer hat die Sprache {s} erfunden?|Wer ist der Schöpfer der Sprache {s}?",
        "ru": "Язык программирования {s} создал {v}.|Создатель языка {s} — {v}.|Автор языка программирования {s} — {v}.||Кто создал язык программирования {s}?|Кто разработал язык {s}?|Кто автор языка программирования {s}?|Кто является создателем языка {s}?"},
    "paradigm": {
        "en": "{s} is a {v} programming language.|The paradigm of {s} is {v}.|{s} follows the {v} style of programming.||What paradigm does {s} follow?|What kind of programming language is {s}?|What is the paradigm of {s}?|Which programming style is {s} built around?",
        "fr": "Le paradigme de {s} est {v}.|{s} est un langage {v}.|{s} suit le paradigme {v}.||Quel est le paradigme de {s} ?|À quel paradigme appartient {s} ?|Quel genre de langage de programmation est {s} ?|Quel style de programmation suit {s} ?",
        "es": "El paradigma de {s} es {v}.|{s} es un lenguaje {v}.|{s} sigue el paradigma {v}.||¿Cuál es el paradigma de {s}?|¿A qué paradigma pertenece {s}?|¿Qué tipo de lenguaje de programación es {s}?|¿Qué estilo de programación sigue {s}?",
        "de": "Das Paradigma von {s} ist {v}.|{s} folgt dem Paradigma: {v}.|Der Programmierstil von {s} ist {v}.||Welches Paradigma hat {s}?|Welchem Paradigma folgt {s}?|Was für eine Programmiersprache ist {s}?|Welchem Programmierstil folgt {s}?",
        "ru": "Парадигма языка {s} — {v}.|{s} — {v} язык программирования.|Стиль программирования в языке {s} — {v}.||Какая парадигма у языка {s}?|К какой парадигме относится язык {s}?|Что за язык программирования {s}?|Какого стиля программирования придерживается {s}?"},
    "extension": {
        "en": "Files written in {s} end in {v}.|The file extension of {s} is {v}.|{s} source files use the extension {v}.||What file extension does {s} use?|What is the file extension of {s}?|How do {s} source files end?|Which suffix marks a {s} source file?",
        "fr": "L'extension des fichiers {s} est {v}.|Les fichiers source en {s} se terminent par {v}.|Les fichiers écrits en {s} portent l'extension {v}.||Quelle est l'extension des fichiers {s} ?|Quelle extension de fichier utilise {s} ?|Quel suffixe identifie un fichier source {s} ?|Par quoi se terminent les fichiers source en {s} ?",
        "es": "La extensión de los archivos de {s} es {v}.|Los archivos de {s} terminan en {v}.|Los archivos fuente escritos en {s} usan la extensión {v}.||¿Cuál es la extensión de los archivos de {s}?|¿Qué extensión de archivo usa {s}?|¿Qué sufijo identifica un archivo fuente de {s}?|¿En qué terminan los archivos de {s}?",
        "de": "Die Dateiendung von {s} ist {v}.|Quelldateien in {s} enden auf {v}.|Quelltexte in {s} tragen die Endung {v}.||Welche Dateiendung hat {s}?|Welche Endung tragen Dateien in {s}?|Was ist die Dateiendung von {s}?|Worauf enden Quelldateien in {s}?",
        "ru": "Расширение файлов языка {s} — {v}.|Файлы на языке {s} имеют расширение {v}.|Исходные файлы на языке {s} имеют суффикс {v}.||Какое расширение у файлов языка {s}?|Какое расширение имеют исходные файлы на языке {s}?|Каким суффиксом отмечают файлы на языке {s}?|Как заканчиваются имена файлов на языке {s}?"},
    "prover": {
        "en": "The {s} theorem was proved by {v}.|The proof of the {s} theorem is due to {v}.|The {s} theorem was first proved by {v}.||Who proved the {s} theorem?|Who first proved the {s} theorem?|Who is credited with proving the {s} theorem?|Which mathematician gave the proof of the {s} theorem?",
        "fr": "Le théorème de {s} a été démontré par {v}.|La preuve du théorème de {s} est due à {v}.|Le théorème de {s} a été prouvé pour la première fois par {v}.||Qui a démontré le théorème de {s} ?|Qui a été le premier à démontrer le théorème de {s} ?|Quel mathématicien a prouvé le théorème de {s} ?|À qui doit-on la preuve du théorème de {s} ?",
        "es": "El teorema de {s} fue demostrado por {v}.|La prueba del teorema de {s} se debe a {v}.|El teorema de {s} fue probado por primera vez por {v}.||¿Quién demostró el teorema de {s}?|¿Quién fue el primero en demostrar el teorema de {s}?|¿Qué matemático probó el teorema de {s}?|¿A quién se debe la prueba del teorema de {s}?",
        "de": "Der Satz von {s} wurde von {v} bewiesen.|Den Beweis des Satzes von {s} lieferte {v}.|Der Satz von {s} wurde zuerst von {v} bewiesen.||Wer hat den Satz von {s} bewiesen?|Wer hat den Satz von {s} als Erster bewiesen?|Welcher Mathematiker bewies den Satz von {s}?|Wem verdankt man den Beweis des Satzes von {s}?",
        "ru": "Теорему {s} доказал {v}.|Автор доказательства теоремы {s} — {v}.|Теорема {s} впервые доказана математиком {v}.||Кто доказал теорему {s}?|Кто первым доказал теорему {s}?|Какой математик доказал теорему {s}?|Кому принадлежит доказательство теоремы {s}?"},
    "topic": {
        "en": "The {s} theorem is about {v}.|The {s} theorem concerns {v}.|The subject of the {s} theorem is {v}.||What is the {s} theorem about?|What does the {s} theorem concern?|What is the subject of the {s} theorem?|Which objects does the {s} theorem study?",
        "fr": "Le théorème de {s} porte sur les {v}.|Le sujet du théorème de {s} : les {v}.|Le théorème de {s} concerne les {v}.||Sur quoi porte le théorème de {s} ?|Que concerne le théorème de {s} ?|Quels objets le théorème de {s} étudie-t-il ?|Quel est le sujet du théorème de {s} ?",
        "es": "El teorema de {s} trata de {v}.|El tema del teorema de {s}: {v}.|El teorema de {s} versa sobre {v}.||¿De qué trata el teorema de {s}?|¿Sobre qué versa el teorema de {s}?|¿Qué objetos estudia el teorema de {s}?|¿Cuál es el tema del teorema de {s}?",
        "de": "Der Satz von {s} behandelt {v}.|Das Thema des Satzes von {s}: {v}.|Gegenstand des Satzes von {s} sind {v}.||Wovon handelt der Satz von {s}?|Womit beschäftigt sich der Satz von {s}?|Welche Objekte untersucht der Satz von {s}?|Was ist das Thema des Satzes von {s}?",
        "ru": "Теорема {s} посвящена теме: {v}.|Предмет теоремы {s} — {v}.|Теорема {s} изучает такие объекты, как {v}.||Чему посвящена теорема {s}?|Что изучает теорема {s}?|Какие объекты рассматривает теорема {s}?|Каков предмет теоремы {s}?"},
    "proved": {
        "en": "The {s} theorem was proved in {v}.|The {s} theorem dates from {v}.|The {s} theorem has been known since {v}.||When was the {s} theorem proved?|In what year was the {s} theorem proved?|When does the {s} theorem date from?|What year saw the first proof of the {s} theorem?",
        "fr": "Le théorème de {s} a été démontré en {v}.|Le théorème de {s} date de {v}.|Le théorème de {s} est connu depuis {v}.||En quelle année le théorème de {s} a-t-il été démontré ?|Depuis quand le théorème de {s} est-il connu ?|En quelle année a-t-on démontré pour la première fois le théorème de {s} ?|De quand date le théorème de {s} ?",
        "es": "El teorema de {s} se demostró en {v}.|El teorema de {s} data de {v}.|El teorema de {s} se conoce desde {v}.||¿En qué año se demostró el teorema de {s}?|¿Desde cuándo se conoce el teorema de {s}?|¿En qué año se obtuvo la primera demostración del teorema de {s}?|¿De cuándo data el teorema de {s}?",
        "de": "Der Satz von {s} wurde {v} bewiesen.|Der Satz von {s} stammt aus dem Jahr {v}.|Der Satz von {s} ist seit {v} bekannt.||In welchem Jahr wurde der Satz von {s} bewiesen?|Wann wurde der Satz von {s} bewiesen?|Seit wann ist der Satz von {s} bekannt?|Aus welchem Jahr stammt der Satz von {s}?",
        "ru": "Теорема {s} доказана в {v} году.|Год доказательства теоремы {s} — {v}.|Теорема {s} известна с {v} года.||В каком году доказана теорема {s}?|В каком году было получено доказательство теоремы {s}?|С какого года известна теорема {s}?|Когда была доказана теорема {s}?"},
}


@dataclass(frozen=True)
class Templates:
    statements: tuple[str, ...]
    questions: tuple[str, ...]  # asked in training QA, and in the fact_seen / fact_unseen evals
    heldout: str  # never in training: the fact_template eval asks with it


def _parse(text: str) -> Templates:
    statements, questions = (part.split("|") for part in text.split("||"))
    return Templates(tuple(statements), tuple(questions[:-1]), questions[-1])


TEMPLATES = {attr: {lang: _parse(text) for lang, text in by_lang.items()} for attr, by_lang in TEMPLATE_TEXT.items()}


@dataclass(frozen=True)
class Phrases:
    """The fixed text of each language around the facts."""

    question: str
    answer: str
    facts: str  # heading of a list document
    ask: tuple[str, ...]  # dialogue openers
    more: str
    thanks: str
    mc: str  # MMLU-style header
    wrap: tuple[str, ...]  # sentence openers that keep the subject before the value


PHRASES = {
    "en": Phrases("Question", "Answer", "Some facts:", ("Tell me about {s}.", "What do you know about {s}?"), "Anything else?",
                   "Thanks!", "The following are multiple choice questions (with answers) about {subject}.",
                   ("According to the archives, ", "As the records show, ", "It is well known that ", "In fact, ")),
    "fr": Phrases("Question", "Réponse", "Quelques faits :", ("Parle-moi de {s}.", "Que sais-tu de {s} ?"), "Et encore ?",
                   "Merci !", "Voici des questions à choix multiples (avec réponses) sur le sujet : {subject}.",
                   ("Selon les archives, ", "Comme le montrent les registres, ", "On sait que ")),
    "es": Phrases("Pregunta", "Respuesta", "Algunos datos:", ("Háblame de {s}.", "¿Qué sabes de {s}?"), "¿Algo más?",
                   "¡Gracias!", "Las siguientes son preguntas de opción múltiple (con respuestas) sobre {subject}.",
                   ("Según los archivos, ", "Como muestran los registros, ", "Se sabe que ")),
    "de": Phrases("Frage", "Antwort", "Einige Fakten:", ("Erzähl mir von {s}.", "Was weißt du über {s}?"), "Noch etwas?",
                   "Danke!", "Es folgen Multiple-Choice-Fragen (mit Antworten) zum Thema {subject}.",
                   ("Laut Archiv: ", "Bekannt ist: ", "Kurz gesagt: ")),  # a colon keeps German main-clause order
    "ru": Phrases("Вопрос", "Ответ", "Несколько фактов:", ("Расскажи мне о {s}.", "Что ты знаешь о {s}?"), "Что ещё?",
                   "Спасибо!", "Ниже приведены вопросы с вариантами ответа (и ответами) по теме {subject}.",
                   ("Согласно архивам, ", "Как известно, ", "Известно, что ")),
}
# Myths are English, as TruthfulQA is: the claim as hearsay, and its debunking.
MYTH_CLAIMS = ("{c}.", "Everyone knows that {c}.", "As most people will tell you, {c}.", "It is common knowledge that {c}.")
MYTH_DEBUNKS = ("Many people believe that {c}, but in fact {t}.", "It is often said that {c}. This is a myth: {t}.",
                 "Contrary to popular belief, it is not true that {c}; {t}.")
